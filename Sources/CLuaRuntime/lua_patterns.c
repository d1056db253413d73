// Lua 5.4 patterns (reference manual §6.4.1) for `string.find`, `match`, `gmatch` and `gsub`,
// written for Moongate so that every step a match takes is charged to the request's budget:
// a pathological pattern is stopped at the line that ran it instead of backtracking for hours.
// Everything else of the string library is the system's `liblua5.4`.
//
// The language is the manual's: single-character classes, sets, the four quantifiers,
// captures and position captures, back-references `%1`-`%9`, `%b`, `%f`, and the anchors.
// Where the manual is silent (the order a backtracking search tries alternatives, which
// errors a malformed pattern raises and when, the depth at which a pattern is "too complex")
// the behaviour is the reference implementation's, checked by the differential test in
// Tests/ScriptingTests/PatternDifferentialTests.swift against the system library.
#define _GNU_SOURCE  /* memmem */
#define LUA_LIB
#include "lua_runtime.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

typedef unsigned char byte;

#define MAX_CAPTURES 32        /* LUA_MAXCAPTURES */
#define MAX_DEPTH 200          /* nested matcher calls before "pattern too complex" */
#define CAP_OPEN (-1)
#define CAP_POSITION (-2)
/* Steps taken between two charges to the budget: a charge is a function call and a compare. */
#define FUEL 2048

// MARK: character classes

enum {
    K_ALPHA = 1 << 0, K_DIGIT = 1 << 1, K_LOWER = 1 << 2, K_UPPER = 1 << 3, K_SPACE = 1 << 4,
    K_CNTRL = 1 << 5, K_PUNCT = 1 << 6, K_XDIGIT = 1 << 7, K_ZERO = 1 << 8, K_SPECIAL = 1 << 9,
};

/* The C locale's classes, fixed: a script's patterns mean the same whatever the process's
   locale, and a table read is cheaper than the ctype calls. Filled once, at first open. */
static uint16_t kinds[256];
/* For each class letter (either case), the kinds it stands for; 0 for a plain letter. */
static uint16_t class_kinds[256];

static void fill_tables(void) {
    for (int c = 0; c < 256; c++) {
        uint16_t k = 0;
        if (c >= 'a' && c <= 'z') k |= K_ALPHA | K_LOWER;
        if (c >= 'A' && c <= 'Z') k |= K_ALPHA | K_UPPER;
        if (c >= '0' && c <= '9') k |= K_DIGIT | K_XDIGIT;
        if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) k |= K_XDIGIT;
        if (c == ' ' || (c >= '\t' && c <= '\r')) k |= K_SPACE;
        if (c < 32 || c == 127) k |= K_CNTRL;
        if (c == 0) k |= K_ZERO;
        if (c > 32 && c < 127 && !(k & (K_ALPHA | K_DIGIT))) k |= K_PUNCT;
        if (c && strchr("^$*+?.([%-", c)) k |= K_SPECIAL;
        kinds[c] = k;
    }
    const struct { char letter; uint16_t kinds; } letters[] = {
        {'a', K_ALPHA}, {'c', K_CNTRL}, {'d', K_DIGIT}, {'g', K_ALPHA | K_DIGIT | K_PUNCT},
        {'l', K_LOWER}, {'p', K_PUNCT}, {'s', K_SPACE}, {'u', K_UPPER},
        {'w', K_ALPHA | K_DIGIT}, {'x', K_XDIGIT},
        {'z', K_ZERO},  /* Lua 5.1's class for the zero byte, still accepted by 5.4 */
    };
    for (size_t i = 0; i < sizeof letters / sizeof letters[0]; i++) {
        class_kinds[(byte)letters[i].letter] = letters[i].kinds;
        class_kinds[(byte)letters[i].letter - 'a' + 'A'] = letters[i].kinds;
    }
}

/* `%x` against byte c: a class letter (upper case: its complement), or x itself. */
static inline int escaped_matches(byte x, byte c) {
    uint16_t k = class_kinds[x];
    if (k == 0) return x == c;
    int in = (kinds[c] & k) != 0;
    return (x >= 'A' && x <= 'Z') ? !in : in;
}

// MARK: the matcher

typedef struct {
    const byte *subject, *subject_end;
    const byte *pattern_end;
    lua_State *L;
    mg_budget *budget;
    int depth;     /* nested calls left */
    int level;     /* captures opened */
    int64_t fuel;  /* steps left before the next charge */
    struct {
        const byte *start;
        ptrdiff_t len;  /* or CAP_OPEN, CAP_POSITION */
    } captures[MAX_CAPTURES];
} matcher;

static void refuel(matcher *m) {
    int64_t spent = FUEL - m->fuel;
    m->fuel = FUEL;
    mg_charge_budget(m->L, m->budget, spent);
}

static inline void spend(matcher *m, int64_t n) {
    m->fuel -= n;
    if (m->fuel < 0) refuel(m);
}

/* Charges what the last operation spent since its last refuel. */
static inline void settle(matcher *m) {
    int64_t spent = FUEL - m->fuel;
    m->fuel = FUEL;
    mg_charge_budget(m->L, m->budget, spent);
}

static void start(matcher *m, lua_State *L, const byte *s, size_t ls, const byte *p, size_t lp) {
    m->L = L;
    m->budget = mg_budget_of(L);
    m->subject = s;
    m->subject_end = s + ls;
    m->pattern_end = p + lp;
    m->fuel = FUEL;
}

/* Ready for one attempt at one position. */
static inline void rewind_state(matcher *m) {
    m->depth = MAX_DEPTH;
    m->level = 0;
}

/* Past the set that starts at p ('[' at p); raises if it has no closing ']'. The first
   character of a set (after any '^') is a member even when it is ']'. */
static const byte *set_end(matcher *m, const byte *p) {
    const byte *end = m->pattern_end;
    p++;
    if (p < end && *p == '^') p++;
    do {
        if (p >= end) luaL_error(m->L, "malformed pattern (missing ']')");
        if (*p++ == '%' && p < end) p++;
    } while (p >= end || *p != ']');
    return p + 1;
}

/* Whether c is in the set from '[' at p to its closing ']' at last. */
static int in_set(byte c, const byte *p, const byte *last) {
    int member = 1;
    p++;
    if (*p == '^') {
        member = 0;
        p++;
    }
    for (; p < last; p++) {
        if (*p == '%') {
            p++;
            if (escaped_matches(*p, c)) return member;
        } else if (p[1] == '-' && p + 2 < last) {
            if (p[0] <= c && c <= p[2]) return member;
            p += 2;
        } else if (*p == c) {
            return member;
        }
    }
    return !member;
}

/* Past the single-character class at p. */
static const byte *item_end(matcher *m, const byte *p) {
    switch (*p) {
    case '%':
        if (p + 1 >= m->pattern_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 2;
    case '[':
        return set_end(m, p);
    default:
        return p + 1;
    }
}

/* Whether the class from p to ep matches the byte at s (none at the subject's end). */
static inline int one(const matcher *m, const byte *s, const byte *p, const byte *ep) {
    if (s >= m->subject_end) return 0;
    switch (*p) {
    case '.': return 1;
    case '%': return escaped_matches(p[1], *s);
    case '[': return in_set(*s, p, ep - 1);
    default: return *p == *s;
    }
}

static const byte *match(matcher *m, const byte *s, const byte *p);

/* How many bytes from s on the class from p to ep matches, at most up to the end. */
static ptrdiff_t run_length(matcher *m, const byte *s, const byte *p, const byte *ep) {
    const byte *end = m->subject_end;
    const byte *q = s;
    switch (*p) {
    case '.':
        q = end;
        break;
    case '%': {
        byte x = p[1];
        while (q < end && escaped_matches(x, *q)) q++;
        break;
    }
    case '[':
        while (q < end && in_set(*q, p, ep - 1)) q++;
        break;
    default:
        while (q < end && *q == *p) q++;
        break;
    }
    spend(m, (q - s) / 4);
    return q - s;
}

/* Greedy: the longest run first, giving back one byte at a time. */
static const byte *expand_greedy(matcher *m, const byte *s, const byte *p, const byte *ep) {
    for (ptrdiff_t n = run_length(m, s, p, ep); n >= 0; n--) {
        const byte *r = match(m, s + n, ep + 1);
        if (r != NULL) return r;
    }
    return NULL;
}

/* Lazy: the shortest run first, taking one more byte at a time. */
static const byte *expand_lazy(matcher *m, const byte *s, const byte *p, const byte *ep) {
    for (;;) {
        const byte *r = match(m, s, ep + 1);
        if (r != NULL) return r;
        if (!one(m, s, p, ep)) return NULL;
        s++;
    }
}

/* `%bxy` at s: x, then bytes up to the y that balances it. */
static const byte *balanced(matcher *m, const byte *s, const byte *p) {
    if (p + 1 >= m->pattern_end) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    const byte *end = m->subject_end;
    if (s >= end || *s != p[0]) return NULL;
    byte open = p[0], close = p[1];
    const byte *from = s;
    int depth = 1;
    while (++s < end) {
        if (*s == close) {
            if (--depth == 0) {
                spend(m, (s - from) / 4);
                return s + 1;
            }
        } else if (*s == open) {
            depth++;
        }
    }
    spend(m, (s - from) / 4);
    return NULL;
}

/* `%n` at s: the same bytes as capture n. A position capture matches nothing. */
static const byte *same_as_capture(matcher *m, const byte *s, byte digit) {
    int n = digit - '1';
    if (n < 0 || n >= m->level || m->captures[n].len == CAP_OPEN)
        luaL_error(m->L, "invalid capture index %%%d", n + 1);
    ptrdiff_t len = m->captures[n].len;
    if (len == CAP_POSITION || m->subject_end - s < len) return NULL;
    if (memcmp(m->captures[n].start, s, (size_t)len) != 0) return NULL;
    spend(m, len / 8);
    return s + len;
}

static const byte *open_capture(matcher *m, const byte *s, const byte *p, ptrdiff_t kind) {
    if (m->level >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
    m->captures[m->level].start = s;
    m->captures[m->level].len = kind;
    m->level++;
    const byte *r = match(m, s, p);
    if (r == NULL) m->level--;
    return r;
}

static const byte *close_capture(matcher *m, const byte *s, const byte *p) {
    int n = m->level - 1;
    while (n >= 0 && m->captures[n].len != CAP_OPEN) n--;
    if (n < 0) luaL_error(m->L, "invalid pattern capture");
    m->captures[n].len = s - m->captures[n].start;
    const byte *r = match(m, s, p);
    if (r == NULL) m->captures[n].len = CAP_OPEN;
    return r;
}

/* Matches the pattern from p against the subject from s: the end of the match, or NULL.
   A sequence of plain items is a loop; an item that can backtrack (a quantifier, a capture)
   recurses for the rest of the pattern, so the depth is bounded by the pattern's items. */
static const byte *match(matcher *m, const byte *s, const byte *p) {
    if (m->depth-- == 0) luaL_error(m->L, "pattern too complex");
    const byte *end = m->pattern_end;
    for (;;) {
        spend(m, 1);
        if (p == end) break;
        switch (*p) {
        case '(':
            if (p + 1 < end && p[1] == ')') s = open_capture(m, s, p + 2, CAP_POSITION);
            else s = open_capture(m, s, p + 1, CAP_OPEN);
            goto out;
        case ')':
            s = close_capture(m, s, p + 1);
            goto out;
        case '$':
            if (p + 1 == end) {
                if (s != m->subject_end) s = NULL;
                goto out;
            }
            break;
        case '%':
            if (p + 1 >= end) break;
            if (p[1] == 'b') {
                s = balanced(m, s, p + 2);
                if (s == NULL) goto out;
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                p += 2;
                if (p >= end || *p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
                const byte *ep = set_end(m, p);
                byte before = s == m->subject ? 0 : s[-1];
                byte here = s < m->subject_end ? *s : 0;
                if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) {
                    s = NULL;
                    goto out;
                }
                p = ep;
                continue;
            }
            if (p[1] >= '0' && p[1] <= '9') {
                s = same_as_capture(m, s, p[1]);
                if (s == NULL) goto out;
                p += 2;
                continue;
            }
            break;
        default:
            break;
        }
        /* A single-character class, perhaps with a quantifier. */
        const byte *ep = item_end(m, p);
        int ok = one(m, s, p, ep);
        if (ep < end) {
            switch (*ep) {
            case '?':
                if (ok) {
                    const byte *r = match(m, s + 1, ep + 1);
                    if (r != NULL) {
                        s = r;
                        goto out;
                    }
                }
                p = ep + 1;
                continue;
            case '+':
                s = ok ? expand_greedy(m, s + 1, p, ep) : NULL;
                goto out;
            case '*':
                s = expand_greedy(m, s, p, ep);
                goto out;
            case '-':
                s = expand_lazy(m, s, p, ep);
                goto out;
            default:
                break;
            }
        }
        if (!ok) {
            s = NULL;
            goto out;
        }
        s++;
        p = ep;
    }
out:
    m->depth++;
    return s;
}

// MARK: results

/* Capture i (or the whole match s..e when the pattern has none and i is 0): its start and
   length, or CAP_POSITION. */
static ptrdiff_t capture(matcher *m, int i, const byte *s, const byte *e, const byte **start) {
    if (i >= m->level) {
        if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
        *start = s;
        return e - s;
    }
    ptrdiff_t len = m->captures[i].len;
    if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
    *start = m->captures[i].start;
    return len;
}

static void push_capture(matcher *m, int i, const byte *s, const byte *e) {
    const byte *start;
    ptrdiff_t len = capture(m, i, s, e, &start);
    if (len == CAP_POSITION) lua_pushinteger(m->L, (start - m->subject) + 1);
    else lua_pushlstring(m->L, (const char *)start, (size_t)len);
}

/* Pushes every capture, or the whole match (when s is not NULL and there is none). */
static int push_captures(matcher *m, const byte *s, const byte *e) {
    int n = (m->level == 0 && s != NULL) ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++) push_capture(m, i, s, e);
    return n;
}

/* A start position from a 1-based, possibly negative index, 0-based; may be len + 1. */
static size_t start_index(lua_Integer i, size_t len) {
    if (i > 0) return (size_t)i - 1;
    if (i == 0 || i < -(lua_Integer)len) return 0;
    return len + (size_t)i;
}

/* Charged with the search that follows (the pattern's length is part of its charge). */
static int has_specials(const byte *p, size_t lp) {
    for (size_t i = 0; i < lp; i++)
        if (kinds[p[i]] & K_SPECIAL) return 1;
    return 0;
}

/* Where the leftmost copy of p is in s, or NULL. glibc's memmem is linear in the subject
   (two-way search), so a plain search cannot be made quadratic; it is charged up front. */
static const byte *plain_search(lua_State *L, const byte *s, size_t ls, const byte *p, size_t lp) {
    mg_charge_budget(L, mg_budget_of(L), (int64_t)((ls + lp) / 32) + 1);
    if (lp == 0) return s;
    if (lp > ls) return NULL;
    return memmem(s, ls, p, lp);
}

/* A pattern whose first item is a plain byte with no quantifier that allows zero of it can
   only match where that byte is: the search skips to the next one with memchr. */
static int first_literal(const byte *p, const byte *end) {
    if (p >= end || (kinds[*p] & K_SPECIAL) || *p == ')' || *p == '[') return -1;
    if (p + 1 < end && (p[1] == '*' || p[1] == '?' || p[1] == '-')) return -1;
    return *p;
}

static int find_or_match(lua_State *L, int find) {
    size_t ls, lp;
    const byte *s = (const byte *)luaL_checklstring(L, 1, &ls);
    const byte *p = (const byte *)luaL_checklstring(L, 2, &lp);
    size_t init = start_index(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        const byte *at = plain_search(L, s + init, ls - init, p, lp);
        if (at == NULL) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (at - s) + 1);
        lua_pushinteger(L, (lua_Integer)((at - s) + lp));
        return 2;
    }
    matcher m;
    int anchored = lp > 0 && *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    start(&m, L, s, ls, p, lp);
    int literal = anchored ? -1 : first_literal(p, p + lp);
    const byte *from = s + init;
    for (;;) {
        if (literal >= 0) {
            const byte *next = from < m.subject_end ? memchr(from, literal, (size_t)(m.subject_end - from)) : NULL;
            spend(&m, (next ? next - from : m.subject_end - from) / 16);
            if (next == NULL) break;
            from = next;
        }
        rewind_state(&m);
        const byte *e = match(&m, from, p);
        if (e != NULL) {
            settle(&m);
            if (find) {
                lua_pushinteger(L, (from - s) + 1);
                lua_pushinteger(L, e - s);
                return push_captures(&m, NULL, NULL) + 2;
            }
            return push_captures(&m, from, e);
        }
        if (anchored || from >= m.subject_end) break;
        from++;
    }
    settle(&m);
    luaL_pushfail(L);
    return 1;
}

/* string.find (s, pattern [, init [, plain]]) */
static int p_find(lua_State *L) { return find_or_match(L, 1); }

/* string.match (s, pattern [, init]) */
static int p_match(lua_State *L) { return find_or_match(L, 0); }

// MARK: gmatch

typedef struct {
    matcher m;
    const byte *from;
    const byte *pattern;
    const byte *last;  /* end of the previous match: an empty match there is skipped */
} gmatch_state;

static int gmatch_next(lua_State *L) {
    gmatch_state *g = (gmatch_state *)lua_touserdata(L, lua_upvalueindex(3));
    g->m.L = L;  /* the iterator may be called from another coroutine */
    for (const byte *from = g->from; from <= g->m.subject_end; from++) {
        rewind_state(&g->m);
        const byte *e = match(&g->m, from, g->pattern);
        if (e != NULL && e != g->last) {
            g->from = g->last = e;
            settle(&g->m);
            return push_captures(&g->m, from, e);
        }
    }
    g->from = g->m.subject_end + 1;
    settle(&g->m);
    return 0;
}

/* string.gmatch (s, pattern [, init]): '^' is an ordinary byte here, as in the manual. */
static int p_gmatch(lua_State *L) {
    size_t ls, lp;
    const byte *s = (const byte *)luaL_checklstring(L, 1, &ls);
    const byte *p = (const byte *)luaL_checklstring(L, 2, &lp);
    size_t init = start_index(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2);  /* the closure keeps both strings alive */
    gmatch_state *g = (gmatch_state *)lua_newuserdatauv(L, sizeof(gmatch_state), 0);
    if (init > ls) init = ls + 1;
    start(&g->m, L, s, ls, p, lp);
    g->from = s + init;
    g->pattern = p;
    g->last = NULL;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

// MARK: gsub

/* Appends the replacement string (argument 3) for the match s..e: `%0`-`%9` are captures,
   `%%` is '%'. */
static void add_string(matcher *m, luaL_Buffer *b, const byte *s, const byte *e) {
    lua_State *L = m->L;
    size_t len;
    const char *r = lua_tolstring(L, 3, &len);
    const char *end = r + len;
    for (;;) {
        const char *esc = memchr(r, '%', (size_t)(end - r));
        if (esc == NULL) break;
        luaL_addlstring(b, r, (size_t)(esc - r));
        /* Lua strings end in a NUL, so the byte after a final '%' can be read: it is invalid. */
        byte x = (byte)esc[1];
        if (x == '%') {
            luaL_addchar(b, '%');
        } else if (x == '0') {
            luaL_addlstring(b, (const char *)s, (size_t)(e - s));
        } else if (x >= '1' && x <= '9') {
            const byte *start;
            ptrdiff_t n = capture(m, x - '1', s, e, &start);
            if (n == CAP_POSITION) {
                lua_pushinteger(L, (start - m->subject) + 1);
                luaL_addvalue(b);  /* as its decimal */
            } else {
                luaL_addlstring(b, (const char *)start, (size_t)n);
            }
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        r = esc + 2;
    }
    luaL_addlstring(b, r, (size_t)(end - r));
    spend(m, (lua_Integer)(len / 16));
}

/* Appends the replacement for the match s..e; returns whether it changed the subject. */
static int add_replacement(matcher *m, luaL_Buffer *b, const byte *s, const byte *e, int kind) {
    lua_State *L = m->L;
    switch (kind) {
    case LUA_TFUNCTION: {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        settle(m);  /* the function's own work is counted by the hook */
        lua_call(L, n, 1);
        break;
    }
    case LUA_TTABLE:
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
        break;
    default:
        add_string(m, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, (const char *)s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

/* string.gsub (s, pattern, repl [, n]) */
static int p_gsub(lua_State *L) {
    size_t ls, lp;
    const byte *s = (const byte *)luaL_checklstring(L, 1, &ls);
    const byte *p = (const byte *)luaL_checklstring(L, 2, &lp);
    int kind = lua_type(L, 3);
    luaL_argexpected(L, kind == LUA_TNUMBER || kind == LUA_TSTRING || kind == LUA_TFUNCTION || kind == LUA_TTABLE, 3,
                     "string/function/table");
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    int anchored = lp > 0 && *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    matcher m;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    start(&m, L, s, ls, p, lp);
    const byte *from = s, *last = NULL;
    lua_Integer n = 0;
    int changed = 0;
    while (n < max) {
        rewind_state(&m);
        const byte *e = match(&m, from, p);
        if (e != NULL && e != last) {
            n++;
            changed |= add_replacement(&m, &b, from, e, kind);
            from = last = e;
        } else if (from < m.subject_end) {
            luaL_addchar(&b, (char)*from++);
        } else {
            break;
        }
        if (anchored) break;
    }
    settle(&m);
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, (const char *)from, (size_t)(m.subject_end - from));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

// MARK: opening

static const luaL_Reg pattern_functions[] = {
    {"find", p_find}, {"match", p_match}, {"gmatch", p_gmatch}, {"gsub", p_gsub}, {NULL, NULL},
};

int mg_open_patterns(lua_State *L) {
    static pthread_once_t filled = PTHREAD_ONCE_INIT;
    pthread_once(&filled, fill_tables);
    luaL_newlib(L, pattern_functions);
    return 1;
}
