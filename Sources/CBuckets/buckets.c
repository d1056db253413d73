// Hot path: one call per rate-limited request. Written in C for the double-word CAS, which
// Swift's standard library does not offer on Linux.
#include "buckets.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef unsigned __int128 u128;

typedef struct __attribute__((aligned(16))) {
    uint64_t key;  // 0: never used
    int64_t tat;   // ticks; the bucket is full when tat <= now
} slot;

struct mg_buckets {
    slot *slots;
    size_t mask;
    size_t bytes;
    uint64_t evictions;
};

// A key's bucket is in the PROBE slots from its hash; past that, the fullest bucket goes.
#define PROBE 8

static inline u128 pack(uint64_t key, int64_t tat) { return ((u128)(uint64_t)tat << 64) | key; }
static inline uint64_t key_of(u128 v) { return (uint64_t)v; }
static inline int64_t tat_of(u128 v) { return (int64_t)(uint64_t)(v >> 64); }

#if defined(__x86_64__)
// cmpxchg16b by hand: clang would otherwise call libatomic's lock-based version unless the
// whole target were built with -mcx16 (every x86-64 CPU since 2006 has the instruction).
static inline int cas(slot *s, u128 *expected, u128 desired) {
    uint64_t lo = (uint64_t)*expected, hi = (uint64_t)(*expected >> 64);
    unsigned char ok;
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(ok), "+m"(*s), "+a"(lo), "+d"(hi)
                         : "b"((uint64_t)desired), "c"((uint64_t)(desired >> 64))
                         : "cc", "memory");
    if (!ok) *expected = ((u128)hi << 64) | lo;
    return ok;
}
#else
// AArch64 and others: the compiler inlines 16-byte atomics (LDAXP/STLXP or CASP).
static inline int cas(slot *s, u128 *expected, u128 desired) {
    return __atomic_compare_exchange_n((u128 *)s, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
#endif

// Two plain atomic halves: a torn read only makes the following CAS fail, which then
// hands back the true value.
static inline u128 load(slot *s) {
    uint64_t key = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
    int64_t tat = __atomic_load_n(&s->tat, __ATOMIC_ACQUIRE);
    return pack(key, tat);
}

mg_buckets *mg_buckets_create(size_t slots) {
    size_t n = 1024;
    while (n < slots) n <<= 1;
    mg_buckets *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    // Anonymous pages: untouched slots cost no resident memory.
    t->bytes = n * sizeof(slot);
    void *p = mmap(NULL, t->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(t);
        return NULL;
    }
    t->slots = p;
    t->mask = n - 1;
    return t;
}

void mg_buckets_destroy(mg_buckets *t) {
    if (!t) return;
    munmap(t->slots, t->bytes);
    free(t);
}

void mg_buckets_clear(mg_buckets *t) { memset(t->slots, 0, t->bytes); }

uint64_t mg_buckets_evictions(const mg_buckets *t) { return __atomic_load_n(&t->evictions, __ATOMIC_RELAXED); }
size_t mg_buckets_slots(const mg_buckets *t) { return t->mask + 1; }

// Ticks to whole microseconds, rounded up (as the Redis script rounds), in seconds.
static inline double up_to_micros(int64_t ticks) {
    const int64_t per_us = 1000 * MG_BUCKET_TICKS_PER_NS;
    if (ticks <= 0) return 0;
    return (double)((ticks + per_us - 1) / per_us) / 1e6;
}

static mg_take_result decide(int64_t tat, int64_t now, int64_t tau, int64_t cost, double t_ticks, int64_t *next) {
    mg_take_result r;
    int64_t base = tat > now ? tat : now;
    int64_t after = base + cost;
    if (after - now <= tau) {
        r.allowed = 1;
        r.remaining = (int64_t)floor((double)(tau - (after - now)) / t_ticks + 1e-9);
        r.retry_after = 0;
        r.reset_after = up_to_micros(after - now);
        *next = after;
    } else {
        r.allowed = 0;
        r.remaining = (int64_t)floor((double)(tau - (base - now)) / t_ticks + 1e-9);
        r.retry_after = up_to_micros(after - now - tau);
        r.reset_after = up_to_micros(base - now);
        *next = tat;
    }
    if (r.remaining < 0) r.remaining = 0;
    return r;
}

// A racing insert put the same key in two slots of its window: the later one's charge
// moves to the earlier, and the later is freed, so every take finds one bucket again.
static void merge_down(mg_buckets *t, uint64_t key, size_t home, int mine, int64_t now) {
    for (int j = 0; j < mine; j++) {
        slot *earlier = &t->slots[(home + j) & t->mask];
        if (key_of(load(earlier)) != key) continue;
        slot *later = &t->slots[(home + mine) & t->mask];
        u128 v = load(later);
        while (key_of(v) == key && !cas(later, &v, pack(0, 0))) {}
        if (key_of(v) != key) return;  // someone else merged it already
        int64_t debt = tat_of(v) - now;
        if (debt <= 0) return;
        u128 e = load(earlier);
        while (key_of(e) == key) {
            int64_t base = tat_of(e) > now ? tat_of(e) : now;
            if (cas(earlier, &e, pack(key, base + debt))) return;
        }
        return;
    }
}

mg_take_result mg_buckets_take(mg_buckets *t, uint64_t key, double capacity, double rate, double cost, int64_t now_ns) {
    const double t_ticks = 1e9 * MG_BUCKET_TICKS_PER_NS / rate;
    const int64_t tau = (int64_t)llround(capacity * t_ticks);
    const int64_t charge = (int64_t)llround(cost * t_ticks);
    const int64_t now = now_ns * MG_BUCKET_TICKS_PER_NS;
    const size_t home = (size_t)key & t->mask;
    for (;;) {
        int found = -1, free_slot = -1, fullest = 0;
        u128 seen[PROBE];
        int64_t least = INT64_MAX;
        for (int i = 0; i < PROBE; i++) {
            u128 v = load(&t->slots[(home + i) & t->mask]);
            seen[i] = v;
            if (key_of(v) == key) {
                found = i;
                break;
            }
            if (free_slot < 0 && (key_of(v) == 0 || tat_of(v) <= now)) free_slot = i;
            if (tat_of(v) < least) {
                least = tat_of(v);
                fullest = i;
            }
        }
        if (found >= 0) {
            slot *s = &t->slots[(home + found) & t->mask];
            u128 v = seen[found];
            for (;;) {
                int64_t next;
                mg_take_result r = decide(tat_of(v), now, tau, charge, t_ticks, &next);
                if (!r.allowed) return r;  // a refusal changes nothing
                if (cas(s, &v, pack(key, next))) return r;
                if (key_of(v) != key) break;  // the slot went to another key: look again
            }
            continue;
        }
        int target = free_slot >= 0 ? free_slot : fullest;
        slot *s = &t->slots[(home + target) & t->mask];
        u128 v = seen[target];
        int64_t next;
        mg_take_result r = decide(now, now, tau, charge, t_ticks, &next);
        if (!r.allowed) return r;
        if (!cas(s, &v, pack(key, next))) continue;
        if (free_slot < 0 && key_of(v) != 0) __atomic_fetch_add(&t->evictions, 1, __ATOMIC_RELAXED);
        if (target > 0) merge_down(t, key, home, target, now);
        return r;
    }
}
