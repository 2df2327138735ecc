/* gRPC status codes, grpc-timeout and grpc-message encoding, trailers. */
#include "http2/grpc.h"

#include <stdio.h>
#include <string.h>

#include "http2/http2_int.h"

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *grpc_status_name(int status)
{
    if (status < 0 || (size_t)status >= GW_ARRAY_LEN(status_names))
        return "UNKNOWN";
    return status_names[status];
}

/* grpc-timeout: TimeoutValue (1-8 ASCII digits) followed by a unit
 * (H, M, S, m, u, n), per the gRPC over HTTP/2 protocol document. */
int grpc_timeout_parse(const char *s, size_t len, uint64_t *out_us)
{
    if (len < 2 || len > 9)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    switch (s[len - 1]) {
    case 'H':
        *out_us = v * 3600ull * 1000000ull;
        break;
    case 'M':
        *out_us = v * 60ull * 1000000ull;
        break;
    case 'S':
        *out_us = v * 1000000ull;
        break;
    case 'm':
        *out_us = v * 1000ull;
        break;
    case 'u':
        *out_us = v;
        break;
    case 'n':
        *out_us = (v + 999) / 1000;
        break;
    default:
        return -1;
    }
    return 0;
}

void grpc_timeout_format(uint64_t us, char out[16])
{
    /* Pick the finest unit that fits in 8 digits, rounding up. */
    static const struct {
        char unit;
        uint64_t per;
    } units[] = {{'u', 1}, {'m', 1000}, {'S', 1000000}, {'M', 60000000}, {'H', 3600000000ull}};
    for (size_t i = 0; i < GW_ARRAY_LEN(units); i++) {
        uint64_t v = us / units[i].per + (us % units[i].per != 0);
        if (v <= 99999999ull) {
            snprintf(out, 16, "%llu%c", (unsigned long long)v, units[i].unit);
            return;
        }
    }
    snprintf(out, 16, "99999999H");
}

/* grpc-message is percent-encoded: bytes outside 0x20..0x7E and '%' itself
 * are written as %XX (the gRPC protocol document, "Responses"). */
void grpc_message_encode(struct gw_buf *out, const char *msg, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            gw_buf_append(out, &msg[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            gw_buf_append(out, e, 3);
        }
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void grpc_message_decode(struct gw_buf *out, const char *val, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (val[i] == '%' && i + 2 < len && hexval(val[i + 1]) >= 0 && hexval(val[i + 2]) >= 0) {
            char c = (char)(hexval(val[i + 1]) << 4 | hexval(val[i + 2]));
            gw_buf_append(out, &c, 1);
            i += 2;
        } else {
            gw_buf_append(out, &val[i], 1);
        }
    }
    gw_buf_cstr(out);
}

size_t grpc_trailers_build(nghttp2_nv *nva, int status, const char *message, char *status_text,
                           struct gw_buf *buf)
{
    int n = snprintf(status_text, 12, "%d", status);
    nva[0] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)status_text, 11, (size_t)n,
                          NGHTTP2_NV_FLAG_NO_COPY_NAME};
    if (message == NULL || message[0] == '\0')
        return 1;
    gw_buf_reset(buf);
    grpc_message_encode(buf, message, strlen(message));
    nva[1] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)gw_buf_cstr(buf), 12, buf->len,
                          NGHTTP2_NV_FLAG_NO_COPY_NAME};
    return 2;
}
