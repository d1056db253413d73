#ifndef MOONGATE_ALLOCATION_COUNTER_H
#define MOONGATE_ALLOCATION_COUNTER_H
/// Heap allocations (malloc, calloc, realloc, the aligned ones) the calling thread has made since it started.
long mg_thread_allocations(void);
/// Usable heap bytes the calling thread allocated and has not freed.
long mg_thread_live_bytes(void);
#endif
