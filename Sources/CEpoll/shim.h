// What Glibc's Swift overlay leaves out: epoll, eventfd, accept4 and thread names, for SocketLoop.
#ifndef MOONGATE_CEPOLL_H
#define MOONGATE_CEPOLL_H
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>

// accept4 is declared only with _GNU_SOURCE, which would make these headers disagree with
// Glibc's module about shared structs.
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
// The same for pthread_setname_np (names the calling thread; the kernel keeps 15 bytes).
#include <pthread.h>
extern int pthread_setname_np(pthread_t thread, const char *name);

static inline void cepoll_name_thread(const char *name) { (void)pthread_setname_np(pthread_self(), name); }

static inline int cepoll_accept(int fd, struct sockaddr_storage *peer) {
    socklen_t len = sizeof(*peer);
    return accept4(fd, (struct sockaddr *)peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

static inline int cepoll_socket(int family) {
    return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

static inline int cepoll_ctl(int ep, int op, int fd, unsigned int events, unsigned long long token) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = token;
    return epoll_ctl(ep, op, fd, &ev);
}

static inline int cepoll_errno(void) { return errno; }

static inline int cepoll_socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
}

static inline int cepoll_set_int(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof(value));
}

static const unsigned int CEPOLL_IN = EPOLLIN;
static const unsigned int CEPOLL_OUT = EPOLLOUT;
static const unsigned int CEPOLL_ERR = EPOLLERR;
static const unsigned int CEPOLL_HUP = EPOLLHUP;
static const unsigned int CEPOLL_RDHUP = EPOLLRDHUP;
#endif
