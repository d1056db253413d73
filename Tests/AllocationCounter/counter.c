// Counts the heap allocations each thread makes, and the bytes it holds, for the tests that
// guard the proxy's hot path ("N kept-alive proxied requests allocate nothing per request once
// warm") and what an idle connection costs. Linked into the test binary only: its malloc,
// calloc, realloc, the aligned allocators and free take precedence over glibc's for the whole
// process, count, and hand over to glibc's own entry points.
#include "allocation_counter.h"

#include <errno.h>
#include <malloc.h>
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *pointer);

static __thread long allocations;
/// Usable bytes of blocks this thread allocated, less those it freed (a block freed on another
/// thread than the one that made it moves between the two threads' counts).
static __thread long live;

static void *counted(void *pointer) {
    if (pointer) {
        allocations++;
        live += (long)malloc_usable_size(pointer);
    }
    return pointer;
}

void *malloc(size_t size) { return counted(__libc_malloc(size)); }

void *calloc(size_t count, size_t size) { return counted(__libc_calloc(count, size)); }

void *realloc(void *pointer, size_t size) {
    if (pointer) live -= (long)malloc_usable_size(pointer);
    void *result = __libc_realloc(pointer, size);
    if (!result && pointer && size) {
        live += (long)malloc_usable_size(pointer);  // failed: the old block stands
        return result;
    }
    return counted(result);
}

void *memalign(size_t alignment, size_t size) { return counted(__libc_memalign(alignment, size)); }

void *aligned_alloc(size_t alignment, size_t size) { return counted(__libc_memalign(alignment, size)); }

int posix_memalign(void **result, size_t alignment, size_t size) {
    void *pointer = __libc_memalign(alignment, size);
    if (!pointer) return ENOMEM;
    *result = counted(pointer);
    return 0;
}

void free(void *pointer) {
    if (pointer) live -= (long)malloc_usable_size(pointer);
    __libc_free(pointer);
}

long mg_thread_allocations(void) { return allocations; }

long mg_thread_live_bytes(void) { return live; }
