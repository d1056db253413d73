// The parts of the Lua runtime that run inside Lua's frames: the budgeted allocator, the
// count hook, the trampoline for Swift functions, and the sandbox's own functions. The
// guarded standard libraries are in lua_guards.c, the pattern functions in lua_patterns.c.
#define LUA_LIB
#include "lua_runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t mg_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void *mg_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    mg_budget *b = (mg_budget *)ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && b->used + (nsize - old) > b->limit) {
        // Over budget: the request is stopped, whatever the script does with the error.
        b->refused++;
        if (b->killed == MG_KILL_NONE) b->killed = MG_KILL_MEMORY;
        return NULL;
    }
    void *block = realloc(ptr, nsize);
    if (block == NULL) {
        if (nsize <= old) return ptr;  // Lua assumes shrinking never fails; the old block still fits
        b->refused++;
        return NULL;
    }
    b->used = b->used - old + nsize;
    return block;
}

mg_budget *mg_budget_of(lua_State *L) {
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return (mg_budget *)ud;
}

static const char *const kill_messages[] = {
    "", "cpu budget exceeded (instructions)", "cpu budget exceeded (time)", "memory budget exceeded",
    "stack depth budget exceeded", "coroutine budget exceeded",
};

static void count_hook(lua_State *L, lua_Debug *ar);

/// Makes the count hook fire on every instruction of `L` from now on: once a budget is
/// exceeded, no script code runs again on this thread (a `__close` handler met while the
/// error unwinds is stopped at its first instruction). The state is discarded afterwards.
static void stop_thread(lua_State *L) {
    // count_hook, not lua_gethook: a watched thread may have run without any hook.
    if (lua_gethookcount(L) != 1 || lua_gethook(L) != count_hook) lua_sethook(L, count_hook, lua_gethookmask(L) | LUA_MASKCOUNT, 1);
}

/// Where the budget's error message is kept once made, so that every later raise (the
/// prelude rethrowing past a pcall, a `__close` handler stopped) repeats the first one.
static const char *const killed_key = "moongate.killed";

/// Raises the budget error. The first raise makes the message, prefixed with where the
/// script was: the innermost frame of a script, so a C function (string.find) or the
/// sandbox's own prelude names its caller, the line that spent the budget.
static int raise_killed(lua_State *L, mg_budget *b) {
    stop_thread(L);
    // Room for the message even when the memory budget is what ran out.
    size_t limit = b->limit;
    if (limit != SIZE_MAX) b->limit = limit + b->slack;
    if (b->kill_noted) {
        lua_getfield(L, LUA_REGISTRYINDEX, killed_key);
    } else {
        lua_Debug ar;
        int found = 0;
        for (int level = 0; level < 8 && lua_getstack(L, level, &ar); level++) {
            if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 && strcmp(ar.source, "=prelude") != 0) {
                lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, kill_messages[b->killed]);
                found = 1;
                break;
            }
        }
        if (!found) lua_pushstring(L, kill_messages[b->killed]);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, killed_key);
        b->kill_noted = 1;
    }
    b->limit = limit;
    return lua_error(L);
}

static int kill(lua_State *L, mg_budget *b, mg_kill_reason why) {
    b->killed = why;
    return raise_killed(L, b);
}

void mg_charge(lua_State *L, int64_t n) {
    mg_budget *b = mg_budget_of(L);
    if (b->killed != MG_KILL_NONE) raise_killed(L, b);
    b->steps += n;
    if (b->max_steps > 0 && b->steps > b->max_steps) kill(L, b, MG_KILL_INSTRUCTIONS);
    // The clock is read once per MG_HOOK_EVERY steps, however they come: every hook, and
    // every large charge, but not every small charge of a library function.
    if (b->steps >= b->clock_at) {
        b->clock_at = b->steps + MG_HOOK_EVERY;
        if (b->deadline_ns != 0 && mg_now_ns() > b->deadline_ns) kill(L, b, MG_KILL_TIME);
    }
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    if (ar->event == LUA_HOOKLINE) {
        mg_budget *lb = mg_budget_of(L);
        if (lb->line_hook != NULL && lua_getinfo(L, "S", ar)) lb->line_hook(lb->line_context, ar->source, ar->currentline);
        return;
    }
    mg_budget *b = mg_budget_of(L);
    int count = lua_gethookcount(L);
    // Armed with a count of 1 (by the watchdog's signal): every MG_HOOK_EVERY from now on. A
    // stopped thread keeps its count of 1.
    if (count == 1 && b->killed == MG_KILL_NONE) lua_sethook(L, count_hook, lua_gethookmask(L), MG_HOOK_EVERY);
    mg_charge(L, count);
    lua_Debug probe;
    // lua_getstack walks the frames up to the level asked, so a shallow stack is cheap to check.
    if (b->max_depth > 0 && lua_getstack(L, b->max_depth, &probe)) kill(L, b, MG_KILL_DEPTH);
}

static int panic(lua_State *L) {
    const char *message = lua_tostring(L, -1);
    fprintf(stderr, "moongate: unprotected Lua error: %s\n", message ? message : "(not a string)");
    fflush(stderr);
    abort();
    return 0;
}

lua_State *mg_newstate(mg_budget *budget) {
    lua_State *L = lua_newstate(mg_alloc, budget);
    if (L == NULL) return NULL;
    lua_atpanic(L, panic);
    // Coroutines inherit the hook from the thread that creates them.
    lua_sethook(L, count_hook, LUA_MASKCOUNT, MG_HOOK_EVERY);
    // Generational collection keeps the garbage of short requests small.
    lua_gc(L, LUA_GCGEN, 0, 0);
    return L;
}

void mg_set_line_hook(lua_State *L, void (*hook)(void *, const char *, int), void *context) {
    mg_budget *b = mg_budget_of(L);
    b->line_hook = hook;
    b->line_context = context;
    lua_sethook(L, count_hook, LUA_MASKCOUNT | LUA_MASKLINE, MG_HOOK_EVERY);
}

void mg_budget_begin(mg_budget *b, size_t memory, int64_t steps, uint64_t deadline_ns, int depth, int coroutines) {
    b->limit = memory == 0 ? SIZE_MAX : b->used + memory;
    b->refused = 0;
    b->steps = 0;
    b->clock_at = 0;
    b->max_steps = steps;
    b->deadline_ns = deadline_ns;
    b->max_depth = depth;
    b->coroutines = 0;
    b->max_coroutines = coroutines;
    b->killed = MG_KILL_NONE;
    b->kill_noted = 0;
}

void mg_budget_end(mg_budget *b) {
    b->limit = SIZE_MAX;
    b->max_steps = 0;
    b->deadline_ns = 0;
    b->max_depth = 0;
    b->max_coroutines = 0;
    b->current = NULL;
}

void mg_budget_save(mg_budget *b, mg_run_budget *r, uint64_t now) {
    r->headroom = b->limit == SIZE_MAX ? SIZE_MAX : (b->limit > b->used ? b->limit - b->used : 0);
    r->refused = b->refused;
    r->steps = b->steps;
    r->max_steps = b->max_steps;
    r->clock_at = b->clock_at;
    r->time_left_ns = b->deadline_ns == 0 ? 0 : (b->deadline_ns > now ? b->deadline_ns - now : 1);
    r->max_depth = b->max_depth;
    r->coroutines = b->coroutines;
    r->max_coroutines = b->max_coroutines;
    r->killed = b->killed;
    r->kill_noted = b->kill_noted;
    r->current = b->current;
    mg_budget_end(b);
}

void mg_budget_restore(mg_budget *b, const mg_run_budget *r, uint64_t now) {
    b->limit = r->headroom == SIZE_MAX ? SIZE_MAX : b->used + r->headroom;
    b->refused = r->refused;
    b->steps = r->steps;
    b->max_steps = r->max_steps;
    b->clock_at = r->clock_at;
    b->deadline_ns = r->time_left_ns == 0 ? 0 : now + r->time_left_ns;
    b->max_depth = r->max_depth;
    b->coroutines = r->coroutines;
    b->max_coroutines = r->max_coroutines;
    b->killed = r->killed;
    b->kill_noted = r->kill_noted;
    b->current = r->current;
}

void mg_hook_count(lua_State *L, int count) {
    lua_sethook(L, count_hook, LUA_MASKCOUNT, count);
}

void mg_watch_thread(lua_State *thread) {
    lua_sethook(thread, NULL, 0, 0);
}

/// The calling thread's watchdog slot: NULL before the first watched run, and `no_slot`
/// when none was free (its runs are then counted exactly).
static _Thread_local mg_watch_slot *thread_slot;
static char no_slot_marker;
#define no_slot ((mg_watch_slot *)&no_slot_marker)

int mg_resume(lua_State *co, lua_State *from, int nargs, int *nresults, uint64_t now) {
    mg_budget *b = mg_budget_of(co);
    if (!b->watched) return lua_resume(co, from, nargs, nresults);
    if (thread_slot == NULL) {
        mg_watch_slot *slot = mg_watch_register();
        thread_slot = slot != NULL ? slot : no_slot;
    }
    if (thread_slot == no_slot) {
        if (lua_gethook(co) == NULL) lua_sethook(co, count_hook, LUA_MASKCOUNT, MG_HOOK_EVERY);
        return lua_resume(co, from, nargs, nresults);
    }
    b->armed = 0;
    mg_watch_mark(thread_slot, co, b, now);
    int status = lua_resume(co, from, nargs, nresults);
    mg_watch_mark(thread_slot, NULL, b, 0);
    // Armed (or being stopped): the next run starts without the hook again. A killed state is
    // discarded, and keeps its hook so that nothing of it runs again.
    if (b->armed != 0 && b->killed == MG_KILL_NONE) lua_sethook(co, NULL, 0, 0);
    b->armed = 0;
    return status;
}

int mg_reset_thread(lua_State *co) {
    int watched = lua_gethook(co) == NULL;
    if (watched) lua_sethook(co, count_hook, LUA_MASKCOUNT, MG_HOOK_EVERY);
    int status = lua_resetthread(co);
    mg_budget *b = mg_budget_of(co);
    if (watched && b->killed == MG_KILL_NONE) lua_sethook(co, NULL, 0, 0);
    return status;
}

static char yield_sentinel;
void *mg_yield_sentinel(void) { return &yield_sentinel; }

// MARK: Swift functions

static int trampoline(lua_State *L) {
    mg_swift_function f = (mg_swift_function)lua_touserdata(L, lua_upvalueindex(1));
    mg_budget *b = mg_budget_of(L);
    size_t limit = b->limit;
    if (limit != SIZE_MAX) b->limit = limit + b->slack;
    int results = f(L);
    b->limit = limit;
    if (results == MG_RAISE) {
        if (lua_type(L, -1) == LUA_TSTRING) {  // as luaL_error: where the script called us
            luaL_where(L, 1);
            lua_insert(L, -2);
            lua_concat(L, 2);
        }
        return lua_error(L);
    }
    if (limit != SIZE_MAX && b->used > limit) return kill(L, b, MG_KILL_MEMORY);
    if (results == MG_YIELD) return lua_yield(L, lua_gettop(L));
    return results;
}

void mg_push_swift_function(lua_State *L, mg_swift_function f) {
    lua_pushlightuserdata(L, (void *)f);
    lua_pushcclosure(L, trampoline, 1);
}

void mg_push_swift_function_with(lua_State *L, mg_swift_function f, void *context) {
    lua_pushlightuserdata(L, (void *)f);
    lua_pushlightuserdata(L, context);
    lua_pushcclosure(L, trampoline, 2);
}

void *mg_function_context(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(2));
}

int mg_must_rethrow(lua_State *L) {
    return mg_budget_of(L)->killed != MG_KILL_NONE;
}

// MARK: guarded library functions

/// `__killed()`: whether a budget was exceeded (the prelude's pcall wrappers rethrow then).
static int l_killed(lua_State *L) {
    int killed = mg_must_rethrow(L);
    if (killed) stop_thread(L);
    lua_pushboolean(L, killed);
    return 1;
}

/// `__dirty()`: a script set a global at request time (see the prelude's `seal`).
static int l_dirty(lua_State *L) {
    mg_budget_of(L)->env_dirty = 1;
    return 0;
}

/// `__charge(n)`: charges work done on the script's behalf (load, bulk table functions).
static int l_charge(lua_State *L) {
    mg_charge(L, luaL_checkinteger(L, 1));
    return 0;
}

/// `coroutine.create(f)`, counted against the request's coroutine budget.
static int l_cocreate(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    mg_budget *b = mg_budget_of(L);
    if (b->max_coroutines > 0 && ++b->coroutines > b->max_coroutines) return kill(L, b, MG_KILL_COROUTINES);
    lua_State *co = lua_newthread(L);
    // Created by a thread that runs without the hook (watched): counted exactly all the same.
    if (lua_gethook(co) == NULL) lua_sethook(co, count_hook, LUA_MASKCOUNT, MG_HOOK_EVERY);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    return 1;
}

/// Opens what the sandbox offers into the global table, plus the hooks the prelude needs
/// (`__killed`, `__charge`, `__cocreate`, `__dirty`). The prelude then builds the script
/// environment from these and empties the global table.
void mg_open_sandbox_libs(lua_State *L, int stock_patterns) {
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    lua_pop(L, 1);
    mg_open_guarded_libs(L, stock_patterns);
    luaL_requiref(L, LUA_COLIBNAME, luaopen_coroutine, 1);
    lua_pop(L, 1);
    lua_register(L, "__killed", l_killed);
    lua_register(L, "__charge", l_charge);
    lua_register(L, "__cocreate", l_cocreate);
    lua_register(L, "__dirty", l_dirty);
}
