#ifndef MOONGATE_BUCKETS_H
#define MOONGATE_BUCKETS_H
#include <stdint.h>
#include <stddef.h>

/// A fixed table of token buckets shared by every event loop of the process, updated with
/// lock-free 128-bit compare-and-swap. Each bucket is one number, its "theoretical arrival
/// time" (GCRA): the bucket is full once that time is past, so an idle bucket needs no
/// sweeping; its slot is simply reused.
typedef struct mg_buckets mg_buckets;

/// Time in the table is in ticks of 1/64 ns, so that 1/rate is exact enough for any rate
/// up to 10^9 per second. Callers pass nanoseconds since the table's own epoch.
#define MG_BUCKET_TICKS_PER_NS 64

typedef struct {
    int allowed;
    /// Whole tokens left after this take (or now, if refused).
    int64_t remaining;
    /// Seconds until this cost would be allowed; 0 if allowed.
    double retry_after;
    /// Seconds until the bucket is full again.
    double reset_after;
} mg_take_result;

/// `slots` is rounded up to a power of two. NULL if out of memory.
mg_buckets *mg_buckets_create(size_t slots);
void mg_buckets_destroy(mg_buckets *table);

/// Takes `cost` tokens from the bucket `key` (a keyed hash of the script's key; never 0)
/// of `capacity` tokens refilled at `rate` per second. Callers check 0 < cost <= capacity
/// and 0 < rate <= 1e9.
mg_take_result mg_buckets_take(mg_buckets *table, uint64_t key, double capacity, double rate, double cost, int64_t now_ns);

/// Buckets dropped before they were full because their probe window was full of busy ones.
uint64_t mg_buckets_evictions(const mg_buckets *table);
size_t mg_buckets_slots(const mg_buckets *table);
/// Clears every bucket (the harness, between tests). Not safe while others take.
void mg_buckets_clear(mg_buckets *table);

#endif
