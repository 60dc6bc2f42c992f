/*
 * Relay loops for mesh-llm's relay threads: the bytes of a streamed response move from a socket
 * to a socket, from a socket into an iroh QUIC stream, or from an iroh QUIC stream into a socket,
 * without running Python for each chunk.
 *
 * native_relay.py compiles this file with the system C compiler and loads it with ctypes, which
 * releases the GIL for the whole call. The stream functions call the iroh bindings' exported
 * uniffi functions through the pointers handed over once by native_relay_init(), in the same
 * order as the generated Python code (clone the object handle, start the Rust future, poll it
 * until READY, complete it, free it). The caller's observe callback (chunk framing, byte counts)
 * gets the relayed bytes in batches (at most OBSERVE_BATCH_BYTES or OBSERVE_BATCH_NS apart, and
 * always before a loop returns), so no Python runs for most chunks.
 *
 * The uniffi structs below are declared as uniffi lays them out; native_relay_layout() reports
 * their sizes and offsets as compiled, and the loader refuses the stream loops unless they equal
 * the bindings' own ctypes definitions.
 *
 * No Python headers: plain C and pthreads. Built with -Wall -Wextra (-Werror in the tests).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* Where send() has no MSG_NOSIGNAL (macOS), the loops set SO_NOSIGPIPE on the sockets they
 * write instead; a platform with neither is not supported (the build fails, relays stay in
 * Python). */
#ifndef MSG_NOSIGNAL
#ifdef SO_NOSIGPIPE
#define MSG_NOSIGNAL 0
#define NEEDS_NOSIGPIPE 1
#else
#error "neither MSG_NOSIGNAL nor SO_NOSIGPIPE: no way to write a closed socket without SIGPIPE"
#endif
#endif

static void no_sigpipe(int fd) {
#ifdef NEEDS_NOSIGPIPE
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, sizeof(on));
#else
    (void)fd;
#endif
}

typedef struct {
    uint64_t capacity;
    uint64_t len;
    uint8_t *data;
} RustBuffer;

typedef struct {
    int8_t code;
    RustBuffer error_buf;
} RustCallStatus;

typedef void (*Continuation)(uint64_t data, int8_t poll_result);

typedef struct {
    uint64_t (*clone_send)(uint64_t handle, RustCallStatus *status);
    uint64_t (*clone_recv)(uint64_t handle, RustCallStatus *status);
    RustBuffer (*buffer_alloc)(uint64_t size, RustCallStatus *status);
    void (*buffer_free)(RustBuffer buffer, RustCallStatus *status);
    uint64_t (*write_all)(uint64_t handle, RustBuffer data);
    uint64_t (*read)(uint64_t handle, uint32_t size_limit);
    void (*poll_void)(uint64_t future, Continuation callback, uint64_t data);
    void (*complete_void)(uint64_t future, RustCallStatus *status);
    void (*free_void)(uint64_t future);
    void (*poll_buffer)(uint64_t future, Continuation callback, uint64_t data);
    RustBuffer (*complete_buffer)(uint64_t future, RustCallStatus *status);
    void (*free_buffer)(uint64_t future);
} Api;

/* Called with the relayed bytes, in order, in batches; non-zero stops the relay. */
typedef int (*Observe)(const uint8_t *data, size_t len);

#define OBSERVE_BATCH_BYTES (64 * 1024) /* flushed at half full */
#define OBSERVE_BATCH_NS (100 * 1000 * 1000LL)

enum {
    RELAY_END = 0,          /* the source ended */
    RELAY_SOURCE_FAILED = 1,/* errno in relay->err, or a failed call in *status */
    RELAY_SINK_FAILED = 2,  /* likewise */
    RELAY_CANCELLED = 3,    /* native_relay_cancel() */
    RELAY_STALLED = 4,      /* the client's socket took only part of a chunk: the rest is in tail */
    RELAY_OBSERVE_FAILED = 5,
};

enum { POLL_READY = 0 };
enum { WAIT_READY, WAIT_CANCELLED };

typedef struct {
    Observe observe; /* NULL: nothing to observe */
    uint8_t *data;
    size_t len;
    size_t cap;
    int64_t since_ns; /* when the oldest byte held arrived */
} Batch;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t answered_cond;
    int answered;
    int8_t code;
    int cancelled;
    int err; /* errno of the failed socket call; EPROTO for a malformed result */
} Relay;

static Api api;
static int api_ready;

int native_relay_abi(void) { return 2; }

#define FIELD(type, member) offsetof(type, member), sizeof(((type *)0)->member)

/* The sizes and offsets of the uniffi structs as compiled, in the order of native.py's
 * LAYOUT_KEYS; writes at most ``n`` and returns how many there are. */
size_t native_relay_layout(uint64_t *out, size_t n) {
    const uint64_t layout[] = {
        sizeof(RustBuffer),     FIELD(RustBuffer, capacity),    FIELD(RustBuffer, len),
        FIELD(RustBuffer, data), sizeof(RustCallStatus),         FIELD(RustCallStatus, code),
        FIELD(RustCallStatus, error_buf),
    };
    size_t count = sizeof(layout) / sizeof(layout[0]);
    for (size_t i = 0; i < n && i < count; i++)
        out[i] = layout[i];
    return count;
}

void native_relay_init(const Api *functions) {
    api = *functions;
    api_ready = 1;
}

Relay *native_relay_new(void) {
    Relay *relay = calloc(1, sizeof(Relay));
    if (relay == NULL)
        return NULL;
    pthread_mutex_init(&relay->lock, NULL);
    pthread_cond_init(&relay->answered_cond, NULL);
    return relay;
}

void native_relay_free(Relay *relay) {
    if (relay == NULL)
        return;
    pthread_cond_destroy(&relay->answered_cond);
    pthread_mutex_destroy(&relay->lock);
    free(relay);
}

/* Make the relay's wait for Rust return (from any thread); the caller also shuts the relay's
 * sockets down, which ends a blocking socket call. */
void native_relay_cancel(Relay *relay) {
    pthread_mutex_lock(&relay->lock);
    relay->cancelled = 1;
    pthread_cond_broadcast(&relay->answered_cond);
    pthread_mutex_unlock(&relay->lock);
}

int native_relay_errno(const Relay *relay) { return relay->err; }

/* Rust's continuation: inline during the poll, or later from one of its threads. Freeing a
 * future calls a pending continuation before it returns, so none arrives after the free. */
static void on_continue(uint64_t data, int8_t code) {
    Relay *relay = (Relay *)(uintptr_t)data;
    pthread_mutex_lock(&relay->lock);
    relay->code = code;
    relay->answered = 1;
    pthread_cond_signal(&relay->answered_cond);
    pthread_mutex_unlock(&relay->lock);
}

/* Poll until READY, waiting on the condition variable between polls. */
static int drive(Relay *relay, uint64_t future,
                 void (*poll)(uint64_t, Continuation, uint64_t)) {
    for (;;) {
        pthread_mutex_lock(&relay->lock);
        relay->answered = 0;
        pthread_mutex_unlock(&relay->lock);
        poll(future, on_continue, (uint64_t)(uintptr_t)relay);
        pthread_mutex_lock(&relay->lock);
        while (!relay->answered && !relay->cancelled)
            pthread_cond_wait(&relay->answered_cond, &relay->lock);
        int cancelled = !relay->answered;
        int8_t code = relay->code;
        pthread_mutex_unlock(&relay->lock);
        if (cancelled)
            return WAIT_CANCELLED;
        if (code == POLL_READY)
            return WAIT_READY;
    }
}

static void put_be32(uint8_t *at, uint32_t value) {
    at[0] = (uint8_t)(value >> 24);
    at[1] = (uint8_t)(value >> 16);
    at[2] = (uint8_t)(value >> 8);
    at[3] = (uint8_t)value;
}

static uint32_t get_be32(const uint8_t *at) {
    return ((uint32_t)at[0] << 24) | ((uint32_t)at[1] << 16) | ((uint32_t)at[2] << 8) | at[3];
}

static void free_buffer(RustBuffer buffer) {
    RustCallStatus ignored = {0};
    api.buffer_free(buffer, &ignored);
}

static int64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Hand what the batch holds to the callback; non-zero if it asked to stop. */
static int batch_flush(Batch *batch) {
    if (batch->len == 0)
        return 0;
    size_t len = batch->len;
    batch->len = 0;
    return batch->observe(batch->data, len);
}

/* Note relayed bytes; the callback runs when the batch is big or old enough. */
static int batch_add(Batch *batch, const uint8_t *data, size_t len) {
    if (batch->observe == NULL)
        return 0;
    if (batch->len + len > batch->cap) {
        if (batch_flush(batch) != 0)
            return 1;
        if (len > batch->cap) /* bigger than a batch: observed as it is */
            return batch->observe(data, len);
    }
    if (batch->len == 0)
        batch->since_ns = now_ns();
    memcpy(batch->data + batch->len, data, len);
    batch->len += len;
    if (batch->len >= OBSERVE_BATCH_BYTES / 2 || now_ns() - batch->since_ns >= OBSERVE_BATCH_NS)
        return batch_flush(batch);
    return 0;
}

/* A batch for ``observe``; 0 on success (ENOMEM otherwise). */
static int batch_init(Batch *batch, Observe observe) {
    memset(batch, 0, sizeof(*batch));
    batch->observe = observe;
    if (observe == NULL)
        return 0;
    batch->data = malloc(OBSERVE_BATCH_BYTES);
    if (batch->data == NULL)
        return ENOMEM;
    batch->cap = OBSERVE_BATCH_BYTES;
    return 0;
}

/* Flush and free; a loop's result becomes RELAY_OBSERVE_FAILED if the last callback failed. */
static int batch_finish(Batch *batch, int result) {
    if (batch->observe != NULL && batch_flush(batch) != 0 && result != RELAY_CANCELLED)
        result = RELAY_OBSERVE_FAILED;
    free(batch->data);
    batch->data = NULL;
    return result;
}

static int send_all(int fd, const uint8_t *data, size_t len) {
    while (len > 0) {
        ssize_t sent = send(fd, data, len, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += sent;
        len -= (size_t)sent;
    }
    return 0;
}

/* recv() that retries EINTR; 0 at the end, -1 with errno on failure (SO_RCVTIMEO: EAGAIN). */
static ssize_t recv_some(int fd, uint8_t *buffer, size_t size) {
    for (;;) {
        ssize_t got = recv(fd, buffer, size, 0);
        if (got >= 0 || errno != EINTR)
            return got;
    }
}

int native_relay_socket_to_socket(Relay *relay, int source, int sink, size_t size,
                                  Observe observe) {
    Batch batch;
    uint8_t *buffer = malloc(size);
    if (buffer == NULL || batch_init(&batch, observe) != 0) {
        free(buffer);
        relay->err = ENOMEM;
        return RELAY_SOURCE_FAILED;
    }
    int result;
    no_sigpipe(sink);
    for (;;) {
        ssize_t got = recv_some(source, buffer, size);
        if (got < 0) {
            relay->err = errno;
            result = RELAY_SOURCE_FAILED;
            break;
        }
        if (got == 0) {
            result = RELAY_END;
            break;
        }
        if (send_all(sink, buffer, (size_t)got) < 0) {
            relay->err = errno;
            result = RELAY_SINK_FAILED;
            break;
        }
        if (batch_add(&batch, buffer, (size_t)got) != 0) {
            result = RELAY_OBSERVE_FAILED;
            break;
        }
    }
    free(buffer);
    return batch_finish(&batch, result);
}

/* Set up a stream loop: 0, or the errno that stops it before it starts. */
static int stream_loop_start(Batch *batch, Observe observe) {
    return api_ready ? batch_init(batch, observe) : ENOSYS;
}

/* One write_all on the stream; takes ownership of ``data``. */
static int stream_write(Relay *relay, uint64_t send_stream, RustBuffer data,
                        RustCallStatus *status) {
    uint64_t handle = api.clone_send(send_stream, status);
    if (status->code != 0) {
        free_buffer(data);
        return RELAY_SINK_FAILED;
    }
    uint64_t future = api.write_all(handle, data);
    int result = RELAY_CANCELLED;
    if (drive(relay, future, api.poll_void) == WAIT_READY) {
        api.complete_void(future, status);
        result = status->code != 0 ? RELAY_SINK_FAILED : RELAY_END;
    }
    api.free_void(future);
    return result;
}

int native_relay_socket_to_stream(Relay *relay, int source, uint64_t send_stream, size_t size,
                                  Observe observe, RustCallStatus *status) {
    Batch batch;
    if ((relay->err = stream_loop_start(&batch, observe)) != 0)
        return RELAY_SINK_FAILED;
    int result;
    for (;;) {
        /* Read straight into the argument buffer: [big-endian i32 length][bytes]. */
        RustBuffer data = api.buffer_alloc(size + 4, status);
        if (status->code != 0) {
            result = RELAY_SINK_FAILED;
            break;
        }
        ssize_t got = recv_some(source, data.data + 4, size);
        if (got <= 0) {
            relay->err = got < 0 ? errno : 0;
            free_buffer(data);
            result = got < 0 ? RELAY_SOURCE_FAILED : RELAY_END;
            break;
        }
        if (batch_add(&batch, data.data + 4, (size_t)got) != 0) {
            free_buffer(data);
            result = RELAY_OBSERVE_FAILED;
            break;
        }
        put_be32(data.data, (uint32_t)got);
        data.len = (uint64_t)got + 4;
        result = stream_write(relay, send_stream, data, status);
        if (result != RELAY_END)
            break;
    }
    return batch_finish(&batch, result);
}

/* One read of up to ``limit`` bytes; on RELAY_END ``*out`` holds the result buffer. */
static int stream_read(Relay *relay, uint64_t recv_stream, uint32_t limit, RustBuffer *out,
                       RustCallStatus *status) {
    uint64_t handle = api.clone_recv(recv_stream, status);
    if (status->code != 0)
        return RELAY_SOURCE_FAILED;
    uint64_t future = api.read(handle, limit);
    int result = RELAY_CANCELLED;
    if (drive(relay, future, api.poll_buffer) == WAIT_READY) {
        *out = api.complete_buffer(future, status);
        result = status->code != 0 ? RELAY_SOURCE_FAILED : RELAY_END;
    }
    api.free_buffer(future);
    return result;
}

int native_relay_stream_to_socket(Relay *relay, uint64_t recv_stream, uint32_t limit, int sink,
                                  Observe observe, RustCallStatus *status, uint8_t *tail,
                                  size_t *tail_len) {
    Batch batch;
    if ((relay->err = stream_loop_start(&batch, observe)) != 0)
        return RELAY_SOURCE_FAILED;
    int result;
    no_sigpipe(sink);
    for (;;) {
        RustBuffer buffer = {0};
        result = stream_read(relay, recv_stream, limit, &buffer, status);
        if (result != RELAY_END)
            break;
        uint32_t len = buffer.len >= 4 ? get_be32(buffer.data) : UINT32_MAX;
        if (len > limit || (uint64_t)len + 4 > buffer.len) {
            free_buffer(buffer);
            relay->err = EPROTO;
            result = RELAY_SOURCE_FAILED;
            break;
        }
        const uint8_t *data = buffer.data + 4;
        if (len == 0) {
            free_buffer(buffer);
            break; /* RELAY_END */
        }
        if (batch_add(&batch, data, len) != 0) {
            free_buffer(buffer);
            result = RELAY_OBSERVE_FAILED;
            break;
        }
        ssize_t sent;
        do
            sent = send(sink, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            relay->err = errno;
            free_buffer(buffer);
            result = RELAY_SINK_FAILED;
            break;
        }
        if (sent < 0)
            sent = 0;
        if ((size_t)sent < len) {
            /* The client is behind: hand the rest to the caller, which keeps reading the
             * stream while it waits (a QUIC stream must not be left unread). */
            *tail_len = len - (size_t)sent;
            memcpy(tail, data + sent, *tail_len);
            free_buffer(buffer);
            result = RELAY_STALLED;
            break;
        }
        free_buffer(buffer);
    }
    return batch_finish(&batch, result);
}
