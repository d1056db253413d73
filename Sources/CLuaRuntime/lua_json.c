// The `json` module. Hand-written rather than lua-cjson (Debian's lua-cjson): cjson buffers
// through malloc and aborts the process when an allocation fails, which a script's memory
// budget would turn into a way to kill the gateway. Here every byte goes through the
// state's budgeted allocator, every element is charged to the CPU budget, nesting is
// bounded, and bad input is an error value, never a crash.
#define LUA_LIB
#include "lua_runtime.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 128

static char null_sentinel;
static char empty_array_sentinel;

// MARK: encode

/// The output, in a userdata at a fixed stack slot: luaL_Buffer must stay at the top of the
/// stack, and the encoder pushes the values it walks.
typedef struct {
    lua_State *L;
    int slot;
    char *data;
    size_t n, cap;
    int depth;
} encoder;

static void grow(encoder *e, size_t need) {
    size_t cap = e->cap;
    while (cap - e->n < need) {
        if (cap > ((size_t)1 << 40)) luaL_error(e->L, "json.encode: output too large");
        cap *= 2;
    }
    char *data = (char *)lua_newuserdatauv(e->L, cap, 0);
    memcpy(data, e->data, e->n);
    lua_replace(e->L, e->slot);
    e->data = data;
    e->cap = cap;
}

static inline void add(encoder *e, const char *s, size_t n) {
    if (e->cap - e->n < n) grow(e, n);
    memcpy(e->data + e->n, s, n);
    e->n += n;
}

static inline void add_char(encoder *e, char c) {
    if (e->cap == e->n) grow(e, 1);
    e->data[e->n++] = c;
}

#define add_literal(e, s) add((e), (s), sizeof(s) - 1)

static void encode_value(encoder *e, int index);

static void encode_string(encoder *e, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    mg_charge(e->L, 1 + (int64_t)(n / 16));
    add_char(e, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
        add(e, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': add_literal(e, "\\\""); break;
        case '\\': add_literal(e, "\\\\"); break;
        case '\n': add_literal(e, "\\n"); break;
        case '\r': add_literal(e, "\\r"); break;
        case '\t': add_literal(e, "\\t"); break;
        case '\b': add_literal(e, "\\b"); break;
        case '\f': add_literal(e, "\\f"); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            add(e, u, 6);
        }
        }
    }
    add(e, s + run, n - run);
    add_char(e, '"');
}

static void encode_number(encoder *e, int index) {
    char text[40];
    int n;
    if (lua_isinteger(e->L, index)) {
        n = snprintf(text, sizeof text, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(e->L, index));
    } else {
        double d = lua_tonumber(e->L, index);
        if (isnan(d) || isinf(d)) luaL_error(e->L, "json.encode: cannot encode %s", isnan(d) ? "NaN" : "infinity");
        // The shortest of %.15g and %.17g that reads back as the same double.
        n = snprintf(text, sizeof text, "%.15g", d);
        if (strtod(text, NULL) != d) n = snprintf(text, sizeof text, "%.17g", d);
    }
    add(e, text, (size_t)n);
}

/// Whether the table at `index` is a sequence 1..n with no other keys (n > 0).
static int is_array(lua_State *L, int index, lua_Integer *length) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, index);
    if (n == 0) return 0;
    lua_Integer keys = 0;
    lua_pushnil(L);
    while (lua_next(L, index) != 0) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1)) {
            lua_pop(L, 1);
            return 0;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1 || k > n) {
            lua_pop(L, 1);
            return 0;
        }
        keys++;
    }
    mg_charge(L, keys);
    *length = n;
    return keys == n;
}

static void encode_table(encoder *e, int index) {
    lua_State *L = e->L;
    if (++e->depth > JSON_MAX_DEPTH) luaL_error(L, "json.encode: nesting deeper than %d (a cycle?)", JSON_MAX_DEPTH);
    luaL_checkstack(L, 4, "json.encode");
    lua_Integer n;
    if (is_array(L, index, &n)) {
        add_char(e, '[');
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1) add_char(e, ',');
            lua_rawgeti(L, index, i);
            encode_value(e, lua_gettop(L));
            lua_pop(L, 1);
        }
        add_char(e, ']');
    } else {
        int first = 1;
        add_char(e, '{');
        lua_pushnil(L);
        while (lua_next(L, index) != 0) {
            int key = lua_gettop(L) - 1;
            if (!first) add_char(e, ',');
            first = 0;
            if (lua_type(L, key) == LUA_TSTRING) {
                size_t len;
                const char *s = lua_tolstring(L, key, &len);
                encode_string(e, s, len);
            } else if (lua_type(L, key) == LUA_TNUMBER) {
                // Numeric keys of a non-sequence become strings, as in JavaScript.
                lua_pushvalue(L, key);
                size_t len;
                const char *s = lua_tolstring(L, -1, &len);
                encode_string(e, s, len);
                lua_pop(L, 1);
            } else {
                luaL_error(L, "json.encode: object keys must be strings or numbers, not %s", luaL_typename(L, key));
            }
            add_char(e, ':');
            encode_value(e, lua_gettop(L));
            lua_pop(L, 1);
        }
        add_char(e, '}');
    }
    e->depth--;
}

static void encode_value(encoder *e, int index) {
    lua_State *L = e->L;
    switch (lua_type(L, index)) {
    case LUA_TNIL: add_literal(e, "null"); break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, index)) add_literal(e, "true"); else add_literal(e, "false");
        break;
    case LUA_TNUMBER: encode_number(e, index); break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, index, &len);
        encode_string(e, s, len);
        break;
    }
    case LUA_TTABLE: encode_table(e, index); break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, index) == &null_sentinel) { add_literal(e, "null"); break; }
        if (lua_touserdata(L, index) == &empty_array_sentinel) { add_literal(e, "[]"); break; }
        /* fall through */
    default:
        luaL_error(L, "json.encode: cannot encode a %s", luaL_typename(L, index));
    }
}

/// json.encode(value) -> string
int mg_json_encode(lua_State *L) {
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    encoder e = {L, 2, NULL, 0, 256, 0};
    e.data = (char *)lua_newuserdatauv(L, e.cap, 0);
    encode_value(&e, 1);
    lua_pushlstring(L, e.data, e.n);
    return 1;
}

// MARK: decode

typedef struct {
    lua_State *L;
    const char *start, *p, *end;
    const char *error;
    int depth;
    /// Whether work is charged to the budget (which may raise: never from Swift callers).
    int charge;
} decoder;

static int fail(decoder *d, const char *why) {
    if (d->error == NULL) d->error = why;
    return 0;
}

static void skip_space(decoder *d) {
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r')) d->p++;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
    char out[4];
    int n;
    if (cp < 0x80) { out[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    luaL_addlstring(b, out, (size_t)n);
}

/// Pushes the string starting after the opening quote.
static int decode_string(decoder *d) {
    const char *s = d->p;
    // Fast path: no escapes.
    while (s < d->end && *s != '"' && *s != '\\' && (unsigned char)*s >= 0x20) s++;
    if (s < d->end && *s == '"') {
        if (d->charge) mg_charge(d->L, 1 + (s - d->p) / 16);
        lua_pushlstring(d->L, d->p, (size_t)(s - d->p));
        d->p = s + 1;
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    luaL_addlstring(&b, d->p, (size_t)(s - d->p));
    while (s < d->end) {
        unsigned char c = (unsigned char)*s;
        if (c == '"') {
            if (d->charge) mg_charge(d->L, 1 + (s - d->p) / 16);
            d->p = s + 1;
            luaL_pushresult(&b);
            return 1;
        }
        if (c < 0x20) return fail(d, "control character in string");
        if (c != '\\') {
            luaL_addchar(&b, (char)c);
            s++;
            continue;
        }
        if (s + 1 >= d->end) break;
        char esc = s[1];
        s += 2;
        switch (esc) {
        case '"': luaL_addchar(&b, '"'); break;
        case '\\': luaL_addchar(&b, '\\'); break;
        case '/': luaL_addchar(&b, '/'); break;
        case 'b': luaL_addchar(&b, '\b'); break;
        case 'f': luaL_addchar(&b, '\f'); break;
        case 'n': luaL_addchar(&b, '\n'); break;
        case 'r': luaL_addchar(&b, '\r'); break;
        case 't': luaL_addchar(&b, '\t'); break;
        case 'u': {
            unsigned cp;
            if (d->end - s < 4 || !hex4(s, &cp)) return fail(d, "bad \\u escape");
            s += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned low;
                if (d->end - s < 6 || s[0] != '\\' || s[1] != 'u' || !hex4(s + 2, &low) || low < 0xDC00 || low > 0xDFFF)
                    return fail(d, "unpaired surrogate in \\u escape");
                s += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail(d, "unpaired surrogate in \\u escape");
            }
            add_utf8(&b, cp);
            break;
        }
        default: return fail(d, "bad escape in string");
        }
    }
    return fail(d, "unterminated string");
}

static int decode_number(decoder *d) {
    const char *s = d->p;
    int is_float = 0;
    if (s < d->end && *s == '-') s++;
    if (s >= d->end) return fail(d, "bad number");
    if (*s == '0') {
        s++;
    } else if (*s >= '1' && *s <= '9') {
        while (s < d->end && *s >= '0' && *s <= '9') s++;
    } else {
        return fail(d, "bad number");
    }
    if (s < d->end && *s == '.') {
        is_float = 1;
        s++;
        if (s >= d->end || *s < '0' || *s > '9') return fail(d, "bad number");
        while (s < d->end && *s >= '0' && *s <= '9') s++;
    }
    if (s < d->end && (*s == 'e' || *s == 'E')) {
        is_float = 1;
        s++;
        if (s < d->end && (*s == '+' || *s == '-')) s++;
        if (s >= d->end || *s < '0' || *s > '9') return fail(d, "bad number");
        while (s < d->end && *s >= '0' && *s <= '9') s++;
    }
    size_t n = (size_t)(s - d->p);
    if (n > 64) return fail(d, "number too long");
    char text[65];
    memcpy(text, d->p, n);
    text[n] = 0;
    d->p = s;
    if (!is_float) {
        // lua_stringtonumber reads integers that overflow as floats, which is what JSON means.
        if (lua_stringtonumber(d->L, text) == 0) return fail(d, "bad number");
        return 1;
    }
    lua_pushnumber(d->L, strtod(text, NULL));
    return 1;
}

static int decode_value(decoder *d);

static int decode_array(decoder *d) {
    lua_State *L = d->L;
    lua_newtable(L);
    lua_Integer n = 0;
    skip_space(d);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        return 1;
    }
    for (;;) {
        if (!decode_value(d)) return 0;
        lua_rawseti(L, -2, ++n);
        skip_space(d);
        if (d->p >= d->end) return fail(d, "unterminated array");
        if (*d->p == ',') { d->p++; continue; }
        if (*d->p == ']') { d->p++; return 1; }
        return fail(d, "expected ',' or ']' in array");
    }
}

static int decode_object(decoder *d) {
    lua_State *L = d->L;
    lua_newtable(L);
    skip_space(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        return 1;
    }
    for (;;) {
        skip_space(d);
        if (d->p >= d->end || *d->p != '"') return fail(d, "expected a string key in object");
        d->p++;
        if (!decode_string(d)) return 0;
        skip_space(d);
        if (d->p >= d->end || *d->p != ':') return fail(d, "expected ':' after object key");
        d->p++;
        if (!decode_value(d)) return 0;
        lua_rawset(L, -3);
        skip_space(d);
        if (d->p >= d->end) return fail(d, "unterminated object");
        if (*d->p == ',') { d->p++; continue; }
        if (*d->p == '}') { d->p++; return 1; }
        return fail(d, "expected ',' or '}' in object");
    }
}

static int literal(decoder *d, const char *word, size_t n) {
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) return fail(d, "unexpected character");
    d->p += n;
    return 1;
}

static int decode_value(decoder *d) {
    lua_State *L = d->L;
    skip_space(d);
    if (d->p >= d->end) return fail(d, "unexpected end of input");
    if (!lua_checkstack(L, 4)) return fail(d, "nesting too deep");
    if (d->charge) mg_charge(L, 1);
    switch (*d->p) {
    case '{':
    case '[': {
        if (++d->depth > JSON_MAX_DEPTH) return fail(d, "nesting too deep");
        int ok = *d->p++ == '{' ? decode_object(d) : decode_array(d);
        d->depth--;
        return ok;
    }
    case '"': d->p++; return decode_string(d);
    case 't': if (!literal(d, "true", 4)) return 0; lua_pushboolean(L, 1); return 1;
    case 'f': if (!literal(d, "false", 5)) return 0; lua_pushboolean(L, 0); return 1;
    case 'n': if (!literal(d, "null", 4)) return 0; lua_pushlightuserdata(L, &null_sentinel); return 1;
    default:
        if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9')) return decode_number(d);
        return fail(d, "unexpected character");
    }
}

/// json.decode(text) -> value | nil, "message at byte N"
static int l_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    decoder d = {L, s, s, s + len, NULL, 0, 1};
    int ok = decode_value(&d);
    if (ok) {
        skip_space(&d);
        if (d.p != d.end) ok = fail(&d, "trailing characters after the value");
    }
    if (!ok) {
        lua_settop(L, 1);
        lua_pushnil(L);
        lua_pushfstring(L, "%s at byte %d", d.error ? d.error : "invalid JSON", (int)(d.p - d.start) + 1);
        return 2;
    }
    return 1;
}

int mg_json_push(lua_State *L, const char *s, size_t len) {
    int top = lua_gettop(L);
    decoder d = {L, s, s, s + len, NULL, 0, 0};
    int ok = decode_value(&d);
    if (ok) {
        skip_space(&d);
        ok = d.p == d.end;
    }
    if (!ok) lua_settop(L, top);
    return ok;
}

int mg_open_json(lua_State *L) {
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, mg_json_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
    lua_pushlightuserdata(L, &null_sentinel);
    lua_setfield(L, -2, "null");
    lua_pushlightuserdata(L, &empty_array_sentinel);
    lua_setfield(L, -2, "empty_array");
    return 1;
}
