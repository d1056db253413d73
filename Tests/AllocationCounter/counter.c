// Counts the heap allocations each thread makes, for the test that guards the proxy's hot
// path ("N kept-alive proxied requests allocate nothing per request once warm"). Linked
// into the test binary only: its malloc, calloc and realloc take precedence over glibc's for
// the whole process, count, and hand over to glibc's own entry points.
#include "allocation_counter.h"

#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *pointer);

static __thread long allocations;

void *malloc(size_t size) {
    allocations++;
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    allocations++;
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    allocations++;
    return __libc_realloc(pointer, size);
}

void free(void *pointer) { __libc_free(pointer); }

long mg_thread_allocations(void) { return allocations; }
