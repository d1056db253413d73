// The parts of the Lua runtime that run inside Lua's frames: the budgeted allocator, the
// count hook, the trampoline for Swift functions, and the guarded library functions.
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

/// Raises the budget error, prefixed with where the script was (the running Lua function,
/// or the nearest one below a C function such as string.find).
static int raise_killed(lua_State *L, mg_budget *b) {
    lua_Debug ar;
    for (int level = 0; level < 4 && lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            return luaL_error(L, "%s:%d: %s", ar.short_src, ar.currentline, kill_messages[b->killed]);
        }
    }
    return luaL_error(L, "%s", kill_messages[b->killed]);
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
    if (b->deadline_ns != 0 && mg_now_ns() > b->deadline_ns) kill(L, b, MG_KILL_TIME);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    if (ar->event == LUA_HOOKLINE) {
        mg_budget *lb = mg_budget_of(L);
        if (lb->line_hook != NULL && lua_getinfo(L, "S", ar)) lb->line_hook(lb->line_context, ar->source, ar->currentline);
        return;
    }
    mg_charge(L, MG_HOOK_EVERY);
    mg_budget *b = mg_budget_of(L);
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
    b->max_steps = steps;
    b->deadline_ns = deadline_ns;
    b->max_depth = depth;
    b->coroutines = 0;
    b->max_coroutines = coroutines;
    b->killed = MG_KILL_NONE;
}

void mg_budget_end(mg_budget *b) {
    b->limit = SIZE_MAX;
    b->max_steps = 0;
    b->deadline_ns = 0;
    b->max_depth = 0;
    b->max_coroutines = 0;
    b->current = NULL;
}

int mg_resume(lua_State *co, lua_State *from, int nargs, int *nresults) {
    return lua_resume(co, from, nargs, nresults);
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

int mg_must_rethrow(lua_State *L) {
    return mg_budget_of(L)->killed != MG_KILL_NONE;
}

// MARK: guarded library functions

/// `__killed()`: whether a budget was exceeded (the prelude's pcall wrappers rethrow then).
static int l_killed(lua_State *L) {
    lua_pushboolean(L, mg_must_rethrow(L));
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
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    return 1;
}

/// The original library function a guard wraps (its first upvalue).
static int call_original(lua_State *L) {
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

static int64_t span(lua_Integer from, lua_Integer to) {
    if (to < from) return 0;
    lua_Unsigned n = (lua_Unsigned)to - (lua_Unsigned)from;
    return n >= (lua_Unsigned)(INT64_MAX / 2) ? INT64_MAX / 2 : (int64_t)n + 1;
}

/// `table.move` loops over its index range even when the table is empty: charge the range.
static int l_tmove(lua_State *L) {
    mg_charge(L, span(luaL_checkinteger(L, 2), luaL_checkinteger(L, 3)));
    return call_original(L);
}

/// `table.concat(t, sep, i, j)` walks i..j (through metamethods): charge the range.
static int l_tconcat(lua_State *L) {
    lua_Integer i = luaL_optinteger(L, 3, 1);
    lua_Integer j = lua_isnoneornil(L, 4) ? (lua_Integer)luaL_len(L, 1) : luaL_checkinteger(L, 4);
    mg_charge(L, span(i, j));
    return call_original(L);
}

static int l_tunpack(lua_State *L) {
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer e = lua_isnoneornil(L, 3) ? (lua_Integer)luaL_len(L, 1) : luaL_checkinteger(L, 3);
    mg_charge(L, span(i, e));
    return call_original(L);
}

/// `table.sort` without a Lua comparator never enters the hook: charge n log n up front.
static int l_tsort(lua_State *L) {
    lua_Integer n = (lua_Integer)luaL_len(L, 1);
    int64_t log = 1;
    for (lua_Integer k = n; k > 1; k >>= 1) log++;
    if (n > 0) mg_charge(L, n * log);
    return call_original(L);
}

static void guard(lua_State *L, const char *name, lua_CFunction guarded) {
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, guarded, 1);
    lua_setfield(L, -2, name);
}

/// Opens what the sandbox offers into the global table, plus the hooks the prelude needs
/// (`__killed`, `__charge`, `__cocreate`). The prelude then builds the script environment
/// from these and empties the global table.
void mg_open_sandbox_libs(lua_State *L) {
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_STRLIBNAME, mg_open_string, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    guard(L, "move", l_tmove);
    guard(L, "concat", l_tconcat);
    guard(L, "unpack", l_tunpack);
    guard(L, "sort", l_tsort);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_COLIBNAME, luaopen_coroutine, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 1);
    lua_pop(L, 1);
    lua_register(L, "__killed", l_killed);
    lua_register(L, "__charge", l_charge);
    lua_register(L, "__cocreate", l_cocreate);
    lua_register(L, "__dirty", l_dirty);
}
