/*
 * gateway: the openshell-gateway program: wires config, reactor, the gRPC
 * server and the API together, owns startup, reload and graceful shutdown.
 */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>

#include "base/base.h"

struct event_base;
struct gateway_http;

/* What the plain-HTTP listeners report. */
struct gateway_http_status {
    bool serving;           /* false while starting or draining */
    unsigned connections;   /* open gRPC connections */
    unsigned active_calls;  /* gRPC calls in flight */
    uint64_t calls_total;   /* calls started since boot */
};

typedef void (*gateway_http_status_fn)(struct gateway_http_status *out, void *arg);

/* Serves GET /healthz, /health (200 while the process runs), /readyz (200
 * only while serving) and, when |metrics| is true, GET /metrics in the
 * Prometheus text format, on numeric |addr|:|port| (plain HTTP/1.1).
 * Returns NULL and logs on failure. Caller owns, free with
 * gateway_http_free(). */
struct gateway_http *gateway_http_new(struct event_base *base, const char *addr, uint16_t port,
                                      bool metrics, gateway_http_status_fn fn, void *arg);
uint16_t gateway_http_port(const struct gateway_http *h);
void gateway_http_free(struct gateway_http *h);

#endif /* GW_GATEWAY_H */
