#ifndef MOONGATE_ALLOCATION_COUNTER_H
#define MOONGATE_ALLOCATION_COUNTER_H
/// Heap allocations (malloc, calloc, realloc) the calling thread has made since it started.
long mg_thread_allocations(void);
#endif
