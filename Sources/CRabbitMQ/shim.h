// Shim over rabbitmq-c 0.11 (Debian 12 librabbitmq-dev, flat header layout).
// Only what Swift cannot call or express directly lives here.
#ifndef TCBRIDGE_CRABBITMQ_SHIM_H
#define TCBRIDGE_CRABBITMQ_SHIM_H

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <poll.h>
#include <linux/sockios.h>

// amqp_login_with_properties is C-variadic, which Swift refuses: a fixed-signature PLAIN login.
static inline amqp_rpc_reply_t tcb_login_plain(amqp_connection_state_t state, const char *vhost,
                                               int channel_max, int frame_max, int heartbeat,
                                               const amqp_table_t *client_properties,
                                               const char *user, const char *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat,
                                      client_properties, AMQP_SASL_METHOD_PLAIN, user, password);
}

// Property flags typed as amqp_flags_t (the macros import as Int32).
static const amqp_flags_t TCB_FLAG_CONTENT_TYPE = AMQP_BASIC_CONTENT_TYPE_FLAG;
static const amqp_flags_t TCB_FLAG_HEADERS = AMQP_BASIC_HEADERS_FLAG;
static const amqp_flags_t TCB_FLAG_DELIVERY_MODE = AMQP_BASIC_DELIVERY_MODE_FLAG;
static const amqp_flags_t TCB_FLAG_MESSAGE_ID = AMQP_BASIC_MESSAGE_ID_FLAG;
static const amqp_flags_t TCB_FLAG_TIMESTAMP = AMQP_BASIC_TIMESTAMP_FLAG;
static const amqp_flags_t TCB_FLAG_TYPE = AMQP_BASIC_TYPE_FLAG;
static const amqp_flags_t TCB_FLAG_APP_ID = AMQP_BASIC_APP_ID_FLAG;
static const amqp_flags_t TCB_FLAG_EXPIRATION = AMQP_BASIC_EXPIRATION_FLAG;

// Field-value kinds as plain integers (AMQP_FIELD_KIND_* is an enum of chars).
static inline uint8_t tcb_kind_utf8(void) { return AMQP_FIELD_KIND_UTF8; }
static inline uint8_t tcb_kind_bytes(void) { return AMQP_FIELD_KIND_BYTES; }
static inline uint8_t tcb_kind_i64(void) { return AMQP_FIELD_KIND_I64; }
static inline uint8_t tcb_kind_i32(void) { return AMQP_FIELD_KIND_I32; }
static inline uint8_t tcb_kind_boolean(void) { return AMQP_FIELD_KIND_BOOLEAN; }
static inline uint8_t tcb_kind_table(void) { return AMQP_FIELD_KIND_TABLE; }

// For a write from outside the connection owner's turn: -1 when the socket holds bytes the peer has
// not acknowledged (SIOCOUTQ, an ioctl, which is C-variadic), has input waiting to be read, or
// cannot be asked; otherwise half its send buffer (SO_SNDBUF, auto-tuned: tens of KiB to MiBs).
// With nothing unacknowledged the send queue is empty, and the kernel checks the buffer's limit
// only before it starts a new segment buffer, so a write of that much (each buffer costs about
// 1 KiB of overhead on top of its bytes) is taken without waiting. Host-wide TCP memory pressure
// can still make the kernel refuse it: the caller then waits as the owner would, until the
// write watchdog gives up on the connection.
static inline int tcb_quiet_send_capacity(int fd) {
    int unsent = 0;
    if (ioctl(fd, SIOCOUTQ, &unsent) != 0 || unsent != 0) return -1;
    struct pollfd readable = { .fd = fd, .events = POLLIN, .revents = 0 };
    if (poll(&readable, 1, 0) != 0) return -1;
    int send_buffer = 0;
    socklen_t length = sizeof(send_buffer);
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, &length) != 0) return -1;
    return send_buffer / 2;
}

// Names the calling thread (visible in top -H, gdb, perf).
static inline void tcb_set_current_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

#endif
