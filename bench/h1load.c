/* h1load: the benchmark's HTTP/1.1 load generator for what wrk cannot do: requests inside a CONNECT tunnel.

   N kept-alive connections, one request in flight on each (wrk's model), for a fixed time, over plain TCP, TLS,
   or TLS inside a CONNECT tunnel (`--tunnel api.openai.com:443`: the CONNECT is sent first, its 200 awaited,
   then TLS starts inside, verified against `--cafile` for `--sni`). The same tool measures the direct rows too,
   so tunnel and direct numbers come from one client. One thread, epoll, OpenSSL; a connection is set up
   (TCP, CONNECT, TLS handshake) before the clock starts, and again, blocking, only if the server closes it.

   The request is sent byte for byte as read from `--request` (head and body, made by bench/load.py). Every
   response is read to its end (Content-Length or chunked); its status is counted, so a row of 403s is visible
   as such: only 2xx answers are `ok`. Prints one line:
     BENCH_RESULT {"requests":..,"ok":..,"statuses":{"200":..},"duration_us":..,"connect_errors":..,...}
   Build: cc -O2 -o h1load h1load.c -lssl -lcrypto   (bench/load.py does it; bench/setup.sh installs libssl-dev) */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { IDLE, WRITING, READING, DOWN };

typedef struct {
    int fd;
    SSL *ssl;
    int state;
    size_t sent;          /* bytes of the request written so far */
    char *buf;            /* the response so far */
    size_t len, cap;
    size_t head_len;      /* 0 until the head's end is found */
    long long content_length; /* -1: chunked; -2: until the connection closes */
    size_t chunk_pos;     /* chunked: where the next size line starts */
    int status, close_after;
    int out_armed;        /* EPOLLOUT asked for (a write would have blocked) */
    uint64_t started_ns;  /* the request's first byte written */
    uint64_t retry_ns;    /* DOWN: when to try again */
} conn_t;

static struct {
    const char *address, *tunnel, *sni, *cafile, *request_file;
    int tls, connections;
    double duration, timeout;
} opt = {.connections = 1, .duration = 1, .timeout = 5};

static char *request;
static size_t request_len;
static SSL_CTX *ctx;
static struct addrinfo *target;
static int epfd;
static conn_t *conns;
static uint64_t deadline;  /* the end of the measured time: no request is started after it, nor counted */

static struct {
    uint64_t requests, ok, connect_errors, tunnel_errors, tls_errors, read_errors, write_errors, timeouts,
        reconnects, parse_errors;
    uint64_t statuses[600];
    uint64_t *lat_ns;
    size_t lat_len, lat_cap;
} st;

static int complained;

static void complain(const char *fmt, ...) {
    if (complained++ >= 5) return;  /* the first few reasons on stderr; the counts say the rest */
    va_list ap;
    va_start(ap, fmt);
    fputs("h1load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "h1load: %s\n", what);
    exit(2);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the request file");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n) die("cannot read the request file");
    fclose(f);
    *len = (size_t)n;
    return data;
}

static void set_blocking_timeouts(int fd, double seconds) {
    struct timeval tv = {.tv_sec = (time_t)seconds, .tv_usec = (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void close_conn(conn_t *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);  /* also leaves the epoll set */
        c->fd = -1;
    }
    c->state = DOWN;
    c->len = c->head_len = 0;
}

/* The CONNECT request and its answer, blocking: 0 when the proxy said 2xx. */
static int open_tunnel(int fd) {
    char line[512];
    int n = snprintf(line, sizeof line, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", opt.tunnel, opt.tunnel);
    if (send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) return -1;
    char answer[4096];
    size_t got = 0;
    /* Byte by byte up to the blank line: nothing after it may be consumed (the server speaks TLS next). */
    while (got < sizeof answer - 1) {
        ssize_t r = recv(fd, answer + got, 1, 0);
        if (r <= 0) return -1;
        got++;
        if (got >= 4 && memcmp(answer + got - 4, "\r\n\r\n", 4) == 0) break;
    }
    answer[got] = 0;
    if (strncmp(answer, "HTTP/1.", 7) != 0 || got < 12 || answer[9] != '2') {
        char *eol = strstr(answer, "\r\n");
        if (eol) *eol = 0;
        complain("CONNECT %s answered: %s", opt.tunnel, answer);
        return -1;
    }
    return 0;
}

/* TCP, then the CONNECT (with --tunnel), then TLS (with --tls), all blocking; then non-blocking, in epoll. */
static int open_conn(conn_t *c) {
    c->fd = socket(target->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_blocking_timeouts(c->fd, opt.timeout);
    if (connect(c->fd, target->ai_addr, target->ai_addrlen) != 0) {
        complain("connect %s: %s", opt.address, strerror(errno));
        st.connect_errors++;
        close_conn(c);
        return -1;
    }
    if (opt.tunnel && open_tunnel(c->fd) != 0) {
        st.tunnel_errors++;
        close_conn(c);
        return -1;
    }
    if (opt.tls) {
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, opt.sni);
        SSL_set1_host(c->ssl, opt.sni);  /* the certificate must name it */
        if (SSL_connect(c->ssl) != 1) {
            unsigned long e = ERR_get_error();
            char reason[256];
            ERR_error_string_n(e, reason, sizeof reason);
            long verify = SSL_get_verify_result(c->ssl);
            complain("TLS with %s: %s%s%s", opt.sni, e ? reason : "the connection closed",
                     verify != X509_V_OK ? "; verify: " : "",
                     verify != X509_V_OK ? X509_verify_cert_error_string(verify) : "");
            ERR_clear_error();
            st.tls_errors++;
            close_conn(c);
            return -1;
        }
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
    c->state = IDLE;
    c->out_armed = 0;
    return 0;
}

static void want_output(conn_t *c, int on) {
    if (c->out_armed == on) return;
    c->out_armed = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Drop the connection after a failure; it is opened again (blocking) when the loop next looks at it. */
static void fail(conn_t *c, uint64_t *counter) {
    (*counter)++;
    close_conn(c);
    c->retry_ns = now_ns();
}

static void receive(conn_t *c);

static void send_more(conn_t *c) {
    while (c->sent < request_len) {
        ssize_t n;
        if (c->ssl) {
            n = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent));
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, (int)n);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    want_output(c, 1);
                    return;
                }
                complain("TLS write failed");
                ERR_clear_error();
                fail(c, &st.write_errors);
                return;
            }
        } else {
            n = send(c->fd, request + c->sent, request_len - c->sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    want_output(c, 1);
                    return;
                }
                complain("write: %s", strerror(errno));
                fail(c, &st.write_errors);
                return;
            }
        }
        c->sent += (size_t)n;
    }
    want_output(c, 0);
    c->state = READING;
    if (c->len > 0) receive(c);  /* the answer came before the request was all out (a refusal, say) */
}

static void start_request(conn_t *c) {
    c->sent = 0;
    c->len = c->head_len = 0;
    c->started_ns = now_ns();
    c->state = WRITING;
    send_more(c);
}

static void parse_head(conn_t *c) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return;
    c->head_len = (size_t)(end - c->buf) + 4;
    c->status = 0;
    c->content_length = -2;
    c->close_after = 0;
    if (c->head_len >= 12 && memcmp(c->buf, "HTTP/1.", 7) == 0) {
        c->status = atoi(c->buf + 9);
        c->close_after = c->buf[7] == '0';  /* HTTP/1.0 */
    }
    char *line = memmem(c->buf, c->head_len, "\r\n", 2) + 2;
    while (line < end) {
        char *eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t name = (size_t)(colon - line);
            char *value = colon + 1;
            while (*value == ' ' || *value == '\t') value++;
            size_t vlen = (size_t)(eol - value);
            if (name == 14 && strncasecmp(line, "content-length", 14) == 0 && c->content_length != -1)
                c->content_length = strtoll(value, NULL, 10);
            else if (name == 17 && strncasecmp(line, "transfer-encoding", 17) == 0 && vlen >= 7 &&
                     strncasecmp(value + vlen - 7, "chunked", 7) == 0)
                c->content_length = -1;
            else if (name == 10 && strncasecmp(line, "connection", 10) == 0 && vlen >= 5 &&
                     strncasecmp(value, "close", 5) == 0)
                c->close_after = 1;
        }
        line = eol + 2;
    }
    c->chunk_pos = c->head_len;
}

/* 1 when the response in the buffer is complete, 0 when more is needed, -1 when it makes no sense. */
static int response_complete(conn_t *c) {
    if (!c->head_len) {
        parse_head(c);
        if (!c->head_len) return 0;
    }
    if (c->content_length >= 0) return c->len >= c->head_len + (size_t)c->content_length;
    if (c->content_length == -2) return 0;  /* until the connection closes */
    for (;;) {  /* chunked */
        char *at = c->buf + c->chunk_pos;
        char *eol = memmem(at, c->len - c->chunk_pos, "\r\n", 2);
        if (!eol) return 0;
        char *after;
        unsigned long long size = strtoull(at, &after, 16);
        if (after == at) return -1;
        size_t data = (size_t)(eol - c->buf) + 2;
        if (size == 0) {  /* the last chunk: optional trailers, then a blank line */
            if (c->len >= data + 2 && memcmp(c->buf + data, "\r\n", 2) == 0) return 1;
            return memmem(c->buf + data, c->len - data, "\r\n\r\n", 4) != NULL;
        }
        if (c->len < data + size + 2) return 0;
        c->chunk_pos = data + size + 2;
    }
}

static void record(conn_t *c, uint64_t done_ns) {
    st.requests++;
    if (c->status >= 200 && c->status < 300) st.ok++;
    st.statuses[c->status > 0 && c->status < 600 ? c->status : 0]++;
    if (st.lat_len == st.lat_cap) {
        st.lat_cap = st.lat_cap ? st.lat_cap * 2 : 65536;
        st.lat_ns = realloc(st.lat_ns, st.lat_cap * sizeof *st.lat_ns);
        if (!st.lat_ns) die("out of memory");
    }
    st.lat_ns[st.lat_len++] = done_ns - c->started_ns;
}

/* Read what is there; on a whole response, count it and (before the deadline) send the next request. */
static void receive(conn_t *c) {
    int eof = 0, complete = 0;
    for (;;) {
        if (c->cap - c->len < 16384) {
            c->cap = c->cap ? c->cap * 2 : 65536;
            c->buf = realloc(c->buf, c->cap);
            if (!c->buf) die("out of memory");
        }
        size_t room = c->cap - c->len - 1;
        ssize_t n;
        if (c->ssl) {
            n = SSL_read(c->ssl, c->buf + c->len, (int)room);
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, (int)n);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
                ERR_clear_error();
                eof = 1;
                break;
            }
        } else {
            n = recv(c->fd, c->buf + c->len, room, 0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (n <= 0) {
                eof = 1;
                break;
            }
        }
        c->len += (size_t)n;
        if (c->state != READING) continue;
        /* A whole response: stop here (epoll, level-triggered, reports anything more), which spares the read
           that would only say EAGAIN; so does a short plain read (the socket had no more). */
        if ((complete = response_complete(c)) != 0) break;
        if (!c->ssl && (size_t)n < room) break;
    }
    if (c->state != READING) {  /* bytes (or a close) while nothing was asked: the server gave up on us */
        if (eof) fail(c, &st.reconnects);
        return;
    }
    if (!complete) complete = response_complete(c);  /* bytes that came while the request was still going out */
    if (complete == 0 && eof && c->head_len && c->content_length == -2) complete = 1;
    if (complete < 0) {
        complain("a response that is not HTTP/1.1");
        fail(c, &st.parse_errors);
        return;
    }
    if (complete == 0) {
        if (eof) {
            complain("the connection closed in the middle of a response");
            fail(c, &st.read_errors);
        }
        return;
    }
    uint64_t t = now_ns();
    if (t <= deadline) record(c, t);
    if (eof || c->close_after) {
        fail(c, &st.reconnects);
        return;
    }
    c->state = IDLE;
    if (t < deadline) start_request(c);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_us(double pct) {
    if (!st.lat_len) return 0;
    size_t rank = (size_t)(pct / 100.0 * (double)st.lat_len + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > st.lat_len) rank = st.lat_len;
    return (double)st.lat_ns[rank - 1] / 1000.0;
}

static void usage(void) {
    fputs("usage: h1load --address HOST:PORT --request FILE [--connections N] [--duration S] [--timeout S]\n"
          "              [--tls --sni NAME --cafile FILE] [--tunnel HOST:PORT]\n", stderr);
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tls")) { opt.tls = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--address")) opt.address = v;
        else if (!strcmp(a, "--tunnel")) opt.tunnel = v;
        else if (!strcmp(a, "--sni")) opt.sni = v;
        else if (!strcmp(a, "--cafile")) opt.cafile = v;
        else if (!strcmp(a, "--request")) opt.request_file = v;
        else if (!strcmp(a, "--connections")) opt.connections = atoi(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else usage();
        i++;
    }
    if (!opt.address || !opt.request_file || opt.connections < 1 || (opt.tls && (!opt.sni || !opt.cafile))) usage();
    signal(SIGPIPE, SIG_IGN);
    request = read_file(opt.request_file, &request_len);

    char host[256];
    const char *colon = strrchr(opt.address, ':');
    if (!colon || (size_t)(colon - opt.address) >= sizeof host) usage();
    memcpy(host, opt.address, (size_t)(colon - opt.address));
    host[colon - opt.address] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    if (getaddrinfo(host, colon + 1, &hints, &target) != 0) die("cannot resolve --address");

    if (opt.tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (SSL_CTX_load_verify_locations(ctx, opt.cafile, NULL) != 1) die("cannot load --cafile");
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    for (int i = 0; i < opt.connections; i++) {
        conns[i].fd = -1;
        open_conn(&conns[i]);
    }

    uint64_t start = now_ns();
    deadline = start + (uint64_t)(opt.duration * 1e9);
    uint64_t timeout_ns = (uint64_t)(opt.timeout * 1e9);
    for (int i = 0; i < opt.connections; i++)
        if (conns[i].state == IDLE) start_request(&conns[i]);
    struct epoll_event events[256];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= deadline) break;
        int wait_ms = (int)((deadline - t) / 1000000) + 1;
        int n = epoll_wait(epfd, events, 256, wait_ms < 10 ? wait_ms : 10);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->state == DOWN) continue;
            if (c->state == WRITING && (events[i].events & EPOLLOUT)) send_more(c);
            if (c->state != DOWN && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) receive(c);
        }
        t = now_ns();
        for (int i = 0; i < opt.connections && t < deadline; i++) {
            conn_t *c = &conns[i];
            if ((c->state == WRITING || c->state == READING) && t - c->started_ns > timeout_ns) {
                complain("a request timed out");
                fail(c, &st.timeouts);
            }
            if (c->state == DOWN && t >= c->retry_ns) {
                if (open_conn(c) == 0) start_request(c);
                else c->retry_ns = now_ns() + 50000000ull;  /* not faster than every 50 ms */
            }
        }
    }
    uint64_t elapsed = now_ns() - start;

    qsort(st.lat_ns, st.lat_len, sizeof *st.lat_ns, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < st.lat_len; i++) sum += (double)st.lat_ns[i];
    printf("BENCH_RESULT {\"requests\":%llu,\"ok\":%llu,\"duration_us\":%llu,\"connect_errors\":%llu,"
           "\"tunnel_errors\":%llu,\"tls_errors\":%llu,\"read_errors\":%llu,\"write_errors\":%llu,"
           "\"timeouts\":%llu,\"parse_errors\":%llu,\"reconnects\":%llu,\"p50_us\":%.1f,\"p90_us\":%.1f,"
           "\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,\"statuses\":{",
           (unsigned long long)st.requests, (unsigned long long)st.ok, (unsigned long long)(elapsed / 1000),
           (unsigned long long)st.connect_errors, (unsigned long long)st.tunnel_errors,
           (unsigned long long)st.tls_errors, (unsigned long long)st.read_errors,
           (unsigned long long)st.write_errors, (unsigned long long)st.timeouts,
           (unsigned long long)st.parse_errors, (unsigned long long)st.reconnects, percentile_us(50),
           percentile_us(90), percentile_us(99), st.lat_len ? (double)st.lat_ns[st.lat_len - 1] / 1000.0 : 0.0,
           st.lat_len ? sum / (double)st.lat_len / 1000.0 : 0.0);
    const char *sep = "";
    for (int s = 0; s < 600; s++)
        if (st.statuses[s]) {
            printf("%s\"%d\":%llu", sep, s, (unsigned long long)st.statuses[s]);
            sep = ",";
        }
    printf("}}\n");
    return 0;
}
