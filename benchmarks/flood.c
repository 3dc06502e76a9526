/* Closed-loop HTTP/1.1 load at high concurrency, with each answer's status and latency.
 *
 * wrk reports latency over every answer, not per status, and a Python client at 1,000
 * connections on a 2-core machine measures its own event loop more than the server. This one
 * epoll loop costs little CPU: every connection sends the same POST, reads the answer (status
 * line, Content-Length), records (status, latency), and sends again, until the duration ends.
 *
 *   flood HOST PORT PATH BODY_FILE CONNECTIONS SECONDS OUT_FILE
 *
 * OUT_FILE gets one line per answer: "<status> <latency_us>" (status 0: connection failed).
 * Built and run by benchmarks/serving.py (cc -O2 -o flood flood.c).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF 65536

typedef struct {
    int fd;
    size_t sent;        /* bytes of the request written */
    char *in;           /* answer bytes read so far */
    size_t have, cap;
    long long started;  /* us */
} conn_t;

static char *request;
static size_t request_len;
static struct sockaddr_in addr;
static FILE *out;

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int open_conn(int ep, conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        return -1;
    c->sent = 0;
    c->have = 0;
    c->started = now_us();
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

/* The connection failed or the server closed it: a request in flight is recorded as status 0
 * (no answer); between requests (a server's keep-alive ended) nothing is lost. Reconnect. */
static void restart(int ep, conn_t *c, int status) {
    if (c->sent > 0)
        fprintf(out, "%d %lld\n", status, now_us() - c->started);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    open_conn(ep, c);
}

/* Complete answer in c->in? Returns its length and sets *status, else 0. */
static size_t complete(conn_t *c, int *status) {
    char *end = memmem(c->in, c->have, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - c->in) + 4;
    *status = atoi(c->in + 9);  /* "HTTP/1.1 200" */
    long length = 0;
    for (char *p = c->in; p < end; p++) {
        if ((*p == 'c' || *p == 'C') && strncasecmp(p, "content-length:", 15) == 0) {
            length = strtol(p + 15, NULL, 10);
            break;
        }
    }
    return c->have >= head + (size_t)length ? head + (size_t)length : 0;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: flood HOST PORT PATH BODY_FILE CONNECTIONS SECONDS OUT_FILE\n");
        return 2;
    }
    FILE *bf = fopen(argv[4], "rb");
    if (!bf) { perror(argv[4]); return 2; }
    fseek(bf, 0, SEEK_END);
    long body_len = ftell(bf);
    fseek(bf, 0, SEEK_SET);
    char *body = malloc(body_len);
    if (fread(body, 1, body_len, bf) != (size_t)body_len) { perror("read body"); return 2; }
    fclose(bf);
    request = malloc(body_len + 512);
    request_len = (size_t)sprintf(request,
        "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
        "Content-Length: %ld\r\n\r\n", argv[3], argv[1], argv[2], body_len);
    memcpy(request + request_len, body, body_len);
    request_len += body_len;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    int n = atoi(argv[5]);
    long long stop = now_us() + (long long)(atof(argv[6]) * 1e6);
    out = fopen(argv[7], "w");
    int ep = epoll_create1(0);
    conn_t *conns = calloc(n, sizeof *conns);
    for (int i = 0; i < n; i++) {
        conns[i].cap = READ_BUF;
        conns[i].in = malloc(READ_BUF);
        open_conn(ep, &conns[i]);
    }
    struct epoll_event events[256];
    char buf[READ_BUF];
    while (now_us() < stop) {
        int ready = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < ready; e++) {
            conn_t *c = events[e].data.ptr;
            if (events[e].events & (EPOLLERR | EPOLLHUP) && !(events[e].events & EPOLLIN)) {
                restart(ep, c, 0);
                continue;
            }
            if ((events[e].events & EPOLLOUT) && c->sent < request_len) {
                ssize_t w = write(c->fd, request + c->sent, request_len - c->sent);
                if (w > 0) c->sent += (size_t)w;
                else if (w < 0 && errno != EAGAIN) { restart(ep, c, 0); continue; }
                if (c->sent == request_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (events[e].events & EPOLLIN) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    restart(ep, c, 0);
                    continue;
                }
                if (c->have + (size_t)r > c->cap) {
                    c->cap = (c->have + (size_t)r) * 2;
                    c->in = realloc(c->in, c->cap);
                }
                memcpy(c->in + c->have, buf, (size_t)r);
                c->have += (size_t)r;
                int status;
                size_t used = complete(c, &status);
                if (used) {
                    fprintf(out, "%d %lld\n", status, now_us() - c->started);
                    /* keep-alive: the next request on the same connection */
                    c->have = 0;
                    c->sent = 0;
                    c->started = now_us();
                    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
    fclose(out);
    return 0;
}
