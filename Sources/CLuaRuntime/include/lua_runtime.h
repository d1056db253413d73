// The C half of the Lua runtime: what must run inside Lua's own frames. Lua raises errors
// with longjmp, which must never cross a Swift frame, so everything that can raise (budget
// checks, the allocator's refusals, argument errors of Swift-implemented functions) happens
// here, and Swift functions report errors by return code through `mg_trampoline`.
#ifndef MOONGATE_LUA_RUNTIME_H
#define MOONGATE_LUA_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/// Why a request's script was stopped. Stable: the Swift side maps these to log fields.
typedef enum {
    MG_KILL_NONE = 0,
    MG_KILL_INSTRUCTIONS = 1,
    MG_KILL_TIME = 2,
    MG_KILL_MEMORY = 3,
    MG_KILL_DEPTH = 4,
    MG_KILL_COROUTINES = 5,
} mg_kill_reason;

/// Per-state accounting, the allocator's user data. One per `lua_State`, owned by Swift.
typedef struct mg_budget {
    /// Bytes currently allocated by the state.
    size_t used;
    /// Allocations that would take `used` past this fail (the per-request memory budget).
    size_t limit;
    /// Extra room while a Swift-implemented function runs, so that its pushes never raise:
    /// an over-budget state is then stopped when the function returns.
    size_t slack;
    /// Allocations refused this request.
    int refused;
    /// Instructions and charged C-function work this request, and the cap (0: none).
    int64_t steps;
    int64_t max_steps;
    /// The step count at which `mg_charge` next reads the clock.
    int64_t clock_at;
    /// CLOCK_MONOTONIC nanoseconds after which the script is stopped (0: none).
    uint64_t deadline_ns;
    /// Deepest Lua call stack allowed (0: none).
    int max_depth;
    /// Coroutines created this request and the cap.
    int coroutines;
    int max_coroutines;
    /// Set once a budget is exceeded; from then on every error is rethrown past `pcall`.
    mg_kill_reason killed;
    /// The budget error's message is made (kept in the registry, raised again as it is).
    int kill_noted;
    /// The request being served (an unretained Swift object), for the API functions.
    void *current;
    /// The Swift object owning the state (unretained), for runtime functions such as `require`.
    void *owner;
    /// A script assigned a global at request time: its module's request globals need a reset.
    int env_dirty;
    /// Runs are counted on demand (`mg_watch`): the script's own thread runs without the
    /// count hook until the watchdog sees a run last longer than `MG_WATCH_AFTER_NS`.
    int watched;
    /// Set by the watchdog's signal once it has armed the count hook for the current run.
    /// Written in a signal handler, hence volatile.
    volatile int armed;
    /// Called for each line a script runs, when coverage is on (tests only).
    void (*line_hook)(void *context, const char *source, int line);
    void *line_context;
} mg_budget;

/// Instructions between two budget checks in the count hook.
#define MG_HOOK_EVERY 1000

/// A watched run that has gone on this long gets the count hook (the watchdog looks every
/// `MG_WATCH_PERIOD_NS`) and is counted from then on. What ran before is not counted: a run
/// may exceed its instruction budget by what one to two milliseconds run (up to about a
/// million instructions here), never more; its time budget holds as ever. Charging that start
/// by time instead was tried: a run the kernel interrupts (softirqs on a busy core) was then
/// charged for time it did not run, and a request failed under load.
#define MG_WATCH_AFTER_NS 1000000u
#define MG_WATCH_PERIOD_NS 1000000u

/// A `lua_Alloc` that keeps `mg_budget.used` and refuses growth past the limit.
void *mg_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/// Creates a state with `budget` as its allocator data, the count hook installed and a
/// panic handler that logs and aborts (never expected: all runtime calls are protected).
lua_State *mg_newstate(mg_budget *budget);

/// Turns on line events for `L` (and threads created from it afterwards): `hook` gets each
/// line a script runs with its chunk name. For test coverage; never in the gateway.
void mg_set_line_hook(lua_State *L, void (*hook)(void *, const char *, int), void *context);

/// The budget of a state.
mg_budget *mg_budget_of(lua_State *L);

/// Adds `n` units of work to the request's steps and raises if a CPU budget is exceeded.
/// For C functions that do work the count hook cannot see.
void mg_charge(lua_State *L, int64_t n);

/// `mg_charge` for the small, frequent charges of library functions: the steps are added in
/// line, and the checks (a budget exceeded, the clock due) run only when one may be due.
static inline void mg_charge_budget(lua_State *L, mg_budget *b, int64_t n) {
    b->steps += n;
    if (b->steps >= b->clock_at || b->killed != MG_KILL_NONE || (b->max_steps > 0 && b->steps > b->max_steps)) mg_charge(L, 0);
}

/// Opens the sandbox's libraries into the globals: base (the prelude hides the unsafe
/// functions), string (the system's, with our budgeted pattern functions, charged bulk
/// functions and no `dump`), table (bulk functions charged), math (seeded from the system's
/// random source), utf8 (`codes` as Lua 5.4.6), coroutine (counted), os (the prelude keeps
/// time, clock, date). `stock_patterns` opens the system's pattern functions instead, for
/// the benchmark that compares them; never for a request.
void mg_open_sandbox_libs(lua_State *L, int stock_patterns);

/// Opens string, table, math, utf8 and os as the sandbox guards them (see above).
void mg_open_guarded_libs(lua_State *L, int stock_patterns);

/// Pushes a table of our pattern functions (`find`, `match`, `gmatch`, `gsub`), each step
/// charged to the state's budget. The sandbox's string library uses them; the differential
/// test compares them with the system's.
int mg_open_patterns(lua_State *L);

/// The signature of a Swift-implemented Lua function. Returns the number of results, or
/// `MG_RAISE` with an error value on top of the stack.
typedef int (*mg_swift_function)(lua_State *L);
#define MG_RAISE (-1)
/// Returned by a Swift function to yield the running coroutine with its results on the stack.
#define MG_YIELD (-2)

/// Pushes a C closure that calls `f` and turns its return codes into Lua errors or yields.
void mg_push_swift_function(lua_State *L, mg_swift_function f);

/// The same, with a pointer the function reads back with `mg_function_context` (a module's
/// shared context, without a registry lookup by name on every call).
void mg_push_swift_function_with(lua_State *L, mg_swift_function f, void *context);

/// The context given to `mg_push_swift_function_with`, inside the Swift function it called.
void *mg_function_context(lua_State *L);

/// Whether an error caught by `pcall` must be raised again (a budget was exceeded).
int mg_must_rethrow(lua_State *L);

/// Decodes JSON text and pushes the value (1), or pushes nothing (0). Charges nothing to
/// the budget, so it never raises for the budget: for Swift callers with bounded input.
int mg_json_push(lua_State *L, const char *s, size_t len);

/// `json.encode(value)`, as a lua_CFunction (call it protected: it raises on bad values).
int mg_json_encode(lua_State *L);

/// Opens the `json` module (encode, decode, null) and leaves it on the stack.
int mg_open_json(lua_State *L);

/// Monotonic clock in nanoseconds.
uint64_t mg_now_ns(void);

/// Resets per-request counters and sets the budgets for the next run.
void mg_budget_begin(mg_budget *b, size_t memory, int64_t steps, uint64_t deadline_ns, int depth, int coroutines);

/// Ends a run: no budget applies while the runtime itself works on the state.
void mg_budget_end(mg_budget *b);

/// One request's part of a budget, kept while its run waits so that other requests can run
/// on the same state meanwhile (`mg_budget_save`, `mg_budget_restore`).
typedef struct mg_run_budget {
    /// Bytes the run may still grow the heap by (SIZE_MAX: no limit): while it waits, other
    /// runs' allocations and frees move `used`, and are not its to pay for.
    size_t headroom;
    int refused;
    int64_t steps;
    int64_t max_steps;
    int64_t clock_at;
    /// Nanoseconds of its time budget left (0 with no deadline): waits do not count.
    uint64_t time_left_ns;
    int max_depth;
    int coroutines;
    int max_coroutines;
    mg_kill_reason killed;
    int kill_noted;
    void *current;
} mg_run_budget;

/// Keeps the running request's part of `b` in `r` (at `now`) and ends the run (`mg_budget_end`).
void mg_budget_save(mg_budget *b, mg_run_budget *r, uint64_t now);

/// Makes `r` the running request's budget again (at `now`).
void mg_budget_restore(mg_budget *b, const mg_run_budget *r, uint64_t now);

/// Runs `lua_resume` on `co` (a run that began at `now`, CLOCK_MONOTONIC ns). When its budget
/// is `watched`, `co` runs without the count hook and this thread's watchdog slot says a run
/// is in progress; the hook is armed by signal if the run lasts, and removed afterwards.
int mg_resume(lua_State *co, lua_State *from, int nargs, int *nresults, uint64_t now);

/// `lua_resetthread` (closing the pending `<close>` variables of a run given up) with the
/// count hook on for its duration, so the handlers are budgeted whether or not `co` is watched.
int mg_reset_thread(lua_State *co);

/// Makes `L` (a state whose budget has `watched` set) run its scripts' threads without the
/// count hook: `thread` loses the hook it inherited. Coroutines scripts create get the hook
/// always (they are counted exactly).
void mg_watch_thread(lua_State *thread);

/// Installs the count hook on `L` with `count` instructions between calls (internal: the
/// watchdog's signal handler arms runs with it).
void mg_hook_count(lua_State *L, int count);

/// Registers the calling thread with the watchdog (starting it on first use); NULL when
/// every slot is taken, and the thread's runs are then counted exactly.
typedef struct mg_watch_slot mg_watch_slot;
mg_watch_slot *mg_watch_register(void);
/// Marks the calling thread's run of `L` as started at `now` (non-zero) or ended (0).
void mg_watch_mark(mg_watch_slot *slot, lua_State *L, mg_budget *b, uint64_t now);

/// The value API functions yield first, so the runtime can tell its own waits from a
/// script's `coroutine.yield`.
void *mg_yield_sentinel(void);

// Lua's function-like macros, as functions Swift can call.
static inline int mg_registry_index(void) { return LUA_REGISTRYINDEX; }
static inline int mg_upvalue_index(int i) { return lua_upvalueindex(i); }
static inline void mg_pop(lua_State *L, int n) { lua_pop(L, n); }
static inline int mg_pcall(lua_State *L, int nargs, int nresults, int handler) { return lua_pcall(L, nargs, nresults, handler); }
static inline void mg_remove(lua_State *L, int index) { lua_remove(L, index); }
static inline void mg_insert(lua_State *L, int index) { lua_insert(L, index); }
static inline int mg_load(lua_State *L, const char *buffer, size_t size, const char *name) {
    return luaL_loadbufferx(L, buffer, size, name, "t");
}
static inline int mg_gc(lua_State *L, int what, int data) { return lua_gc(L, what, data); }
static inline const char *mg_short_src(lua_Debug *ar) { return ar->short_src; }

#endif
