// The standard libraries as the sandbox offers them. Lua's count hook sees only VM
// instructions, so a library function that loops in C (a repeat, a table shift, a big copy)
// could run for seconds between two hooks. Each such function is wrapped here to charge its
// work to the request's budget before it runs (or, where the work is known only afterwards,
// right after), so an overrun is stopped at the line that caused it. The functions
// themselves are the system's `liblua5.4`, except the pattern functions (lua_patterns.c)
// and `utf8.codes`, which validates as Lua 5.4.6 does.
#define LUA_LIB
#include "lua_runtime.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

int mg_open_patterns(lua_State *L);

/// The original library function a guard wraps (its first upvalue).
static int call_original(lua_State *L) {
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/// Replaces `t[name]` (t at the top of the stack) by `guarded`, with the original as upvalue.
static void guard(lua_State *L, const char *name, lua_CFunction guarded) {
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, guarded, 1);
    lua_setfield(L, -2, name);
}

/// The number of indices from..to, saturated (0 when empty).
static int64_t span(lua_Integer from, lua_Integer to) {
    if (to < from) return 0;
    lua_Unsigned n = (lua_Unsigned)to - (lua_Unsigned)from;
    return n >= (lua_Unsigned)(INT64_MAX / 2) ? INT64_MAX / 2 : (int64_t)n + 1;
}

/// A 1-based index as the string functions read it (negative from the end), clamped to 0..len.
static size_t string_index(lua_Integer i, size_t len) {
    if (i >= 0) return (lua_Unsigned)i > len ? len : (size_t)i;
    if ((lua_Unsigned)-i > len) return 0;
    return len + (size_t)i + 1;
}

// MARK: string

/// `string.rep(s, n, sep)` writes n copies: charged per copy and per byte. n copies of ""
/// are "" at once (the library would loop n times to append nothing).
static int l_rep(lua_State *L) {
    size_t l, lsep;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n > 0 && l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    if (n > 0) {
        int64_t copies = n > INT64_MAX / 4 ? INT64_MAX / 4 : (int64_t)n;
        int64_t per = (int64_t)((l + lsep) / 64);
        mg_charge(L, per > 0 && copies > INT64_MAX / 4 / per ? INT64_MAX / 4 : copies + copies * per);
    }
    return call_original(L);
}

/// `string.byte(s, i, j)` pushes one value per byte.
static int l_byte(lua_State *L) {
    size_t l;
    luaL_checklstring(L, 1, &l);
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer j = luaL_optinteger(L, 3, i);
    mg_charge_budget(L, mg_budget_of(L), span((lua_Integer)string_index(i, l), (lua_Integer)string_index(j, l)));
    return call_original(L);
}

/// `string.sub(s, i, j)` copies the slice.
static int l_sub(lua_State *L) {
    size_t l;
    luaL_checklstring(L, 1, &l);
    size_t i = string_index(luaL_optinteger(L, 2, 1), l);
    size_t j = string_index(luaL_optinteger(L, 3, -1), l);
    if (j > i) mg_charge_budget(L, mg_budget_of(L), (int64_t)((j - i) / 64));
    return call_original(L);
}

/// `upper`, `lower`, `reverse`: one pass over the string.
static int l_whole(lua_State *L) {
    size_t l;
    luaL_checklstring(L, 1, &l);
    mg_charge_budget(L, mg_budget_of(L), (int64_t)(l / 16));
    return call_original(L);
}

/// `format`, `pack`, `unpack`, `packsize`: the format string's items, then (format) the
/// bytes written, known only afterwards.
static int l_formatted(lua_State *L) {
    size_t l;
    luaL_checklstring(L, 1, &l);
    mg_budget *b = mg_budget_of(L);
    mg_charge_budget(L, b, (int64_t)(l / 4));
    int results = call_original(L);
    if (results == 1 && lua_type(L, -1) == LUA_TSTRING) mg_charge_budget(L, b, (int64_t)(lua_rawlen(L, -1) / 32));
    return results;
}

static int open_string(lua_State *L) {
    luaopen_string(L);
    mg_open_patterns(L);
    static const char *const patterns[] = {"find", "match", "gmatch", "gsub"};
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        lua_getfield(L, -1, patterns[i]);
        lua_setfield(L, -3, patterns[i]);
    }
    lua_pop(L, 1);
    // Bytecode is never loaded, and a dump would show a function's upvalue layout.
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    guard(L, "rep", l_rep);
    guard(L, "byte", l_byte);
    guard(L, "sub", l_sub);
    guard(L, "upper", l_whole);
    guard(L, "lower", l_whole);
    guard(L, "reverse", l_whole);
    guard(L, "format", l_formatted);
    guard(L, "pack", l_formatted);
    guard(L, "packsize", l_formatted);
    guard(L, "unpack", l_formatted);
    return 1;
}

/// The system's string library, unguarded: for the benchmark that compares the pattern
/// functions with the stock ones. Never opened for a request.
static int open_stock_string(lua_State *L) {
    luaopen_string(L);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    return 1;
}

// MARK: table

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

/// `table.insert(t, pos, v)` and `table.remove(t, pos)` shift the elements after pos. The
/// raw length is the estimate (a `__len` is not called twice).
static int l_tshift(lua_State *L) {
    if (lua_type(L, 1) == LUA_TTABLE && lua_gettop(L) >= 2 && lua_isinteger(L, 2)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
        mg_charge(L, span(lua_tointeger(L, 2), n));
    }
    return call_original(L);
}

// MARK: utf8

/// `utf8.len(s, i, j)`, `utf8.codepoint(s, i, j)`, `utf8.offset(s, n, i)`: one pass over
/// (at most) the string.
static int l_utf8_scan(lua_State *L) {
    size_t l;
    luaL_checklstring(L, 1, &l);
    mg_charge(L, (int64_t)(l / 8));
    return call_original(L);
}

static inline int is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

/// Decodes the UTF-8 sequence at s (up to end): its length, or 0 when invalid. Strict:
/// code points up to U+10FFFF, no surrogates; lax: up to 2^31 - 1 in up to six bytes.
/// Overlong forms are invalid in both.
static size_t utf8_decode_one(const unsigned char *s, const unsigned char *end, int strict, lua_Integer *code) {
    static const uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000, 0x200000, 0x4000000};
    unsigned char lead = *s;
    if (lead < 0x80) {
        *code = lead;
        return 1;
    }
    size_t len;
    if (lead < 0xC0) return 0;  // a continuation byte cannot start a sequence
    else if (lead < 0xE0) len = 2;
    else if (lead < 0xF0) len = 3;
    else if (lead < 0xF8) len = 4;
    else if (lead < 0xFC) len = 5;
    else if (lead < 0xFE) len = 6;
    else return 0;
    if ((size_t)(end - s) < len) return 0;
    uint32_t value = lead & (0x7F >> len);
    for (size_t k = 1; k < len; k++) {
        if (!is_continuation(s[k])) return 0;
        value = (value << 6) | (s[k] & 0x3F);
    }
    if (value < smallest[len] || value > 0x7FFFFFFFu) return 0;
    if (strict && (value > 0x10FFFFu || (value >= 0xD800u && value <= 0xDFFFu))) return 0;
    *code = (lua_Integer)value;
    return len;
}

/// The iterator of `utf8.codes`: from the byte after the previous character's start, past
/// its continuation bytes, the next character. A character followed by a stray continuation
/// byte is invalid (Lua 5.4.4 skipped those silently; 5.4.6 raises, and so do we).
static int codes_next(lua_State *L, int strict) {
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    lua_Unsigned n = (lua_Unsigned)lua_tointeger(L, 2);
    while (n < len && is_continuation(s[n])) n++;
    if (n >= len) return 0;
    lua_Integer code;
    size_t step = utf8_decode_one(s + n, s + len, strict, &code);
    if (step == 0 || (n + step < len && is_continuation(s[n + step]))) return luaL_error(L, "invalid UTF-8 code");
    lua_pushinteger(L, (lua_Integer)n + 1);
    lua_pushinteger(L, code);
    return 2;
}

static int codes_next_strict(lua_State *L) { return codes_next(L, 1); }
static int codes_next_lax(lua_State *L) { return codes_next(L, 0); }

/// `utf8.codes(s [, lax])`
static int l_utf8_codes(lua_State *L) {
    int lax = lua_toboolean(L, 2);
    const char *s = luaL_checkstring(L, 1);
    luaL_argcheck(L, !is_continuation((unsigned char)s[0]), 1, "invalid UTF-8 code");
    lua_pushcfunction(L, lax ? codes_next_lax : codes_next_strict);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    return 3;
}

static int open_utf8(lua_State *L) {
    luaopen_utf8(L);
    guard(L, "len", l_utf8_scan);
    guard(L, "codepoint", l_utf8_scan);
    guard(L, "offset", l_utf8_scan);
    lua_pushcfunction(L, l_utf8_codes);
    lua_setfield(L, -2, "codes");
    return 1;
}

// MARK: os

/// `os.date(format, time)`: one `strftime` per item of the format, then the text.
static int l_date(lua_State *L) {
    mg_budget *b = mg_budget_of(L);
    if (lua_type(L, 1) == LUA_TSTRING) mg_charge_budget(L, b, (int64_t)(lua_rawlen(L, 1) / 2));
    int results = call_original(L);
    if (results == 1 && lua_type(L, -1) == LUA_TSTRING) mg_charge_budget(L, b, (int64_t)(lua_rawlen(L, -1) / 32));
    return results;
}

static int open_os(lua_State *L) {
    luaopen_os(L);
    guard(L, "date", l_date);
    return 1;
}

// MARK: math

/// Seeds the state's generator from the system's random source. Lua seeds it from the time
/// and an address, which another state or a later process can repeat; scripts cannot reseed
/// it (the prelude hides `math.randomseed`), so no request decides what the next one draws.
static int open_math(lua_State *L) {
    luaopen_math(L);
    lua_Integer seed[2];
    size_t got = 0;
    while (got < sizeof seed) {
        ssize_t n = getrandom((char *)seed + got, sizeof seed - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return luaL_error(L, "no system random source for math.random");
        got += (size_t)n;
    }
    lua_getfield(L, -1, "randomseed");
    lua_pushinteger(L, seed[0]);
    lua_pushinteger(L, seed[1]);
    lua_call(L, 2, 0);
    return 1;
}

static int open_table(lua_State *L) {
    luaopen_table(L);
    guard(L, "move", l_tmove);
    guard(L, "concat", l_tconcat);
    guard(L, "unpack", l_tunpack);
    guard(L, "sort", l_tsort);
    guard(L, "insert", l_tshift);
    guard(L, "remove", l_tshift);
    return 1;
}

void mg_open_guarded_libs(lua_State *L, int stock_patterns) {
    luaL_requiref(L, LUA_STRLIBNAME, stock_patterns ? open_stock_string : open_string, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_TABLIBNAME, open_table, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, open_math, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, open_utf8, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_OSLIBNAME, open_os, 1);
    lua_pop(L, 1);
}
