/* Helpers shared by the store-backed handlers. */
#include "api/api.h"

#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "store/store.h"

void api_finish_store_error(struct grpc_call *call, const struct store_result *r, const char *what)
{
    switch (r->status) {
    case STORE_ERR_UNAVAILABLE:
    case STORE_ERR_BUSY:
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "database unavailable; retry later");
        return;
    case STORE_ERR_TIMEOUT:
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "database did not answer in time");
        return;
    default:
        break;
    }
    if (store_is_unique_violation(r)) {
        grpc_call_finishf(call, GRPC_STATUS_ALREADY_EXISTS, "%s already exists", what);
        return;
    }
    log_error("api.store_error", LF_STR("method", grpc_call_method(call)->path),
              LF_STR("sqlstate", r->sqlstate), LF_STR("error", r->error));
    grpc_call_finish(call, GRPC_STATUS_INTERNAL, "internal database error");
}

bool api_store_unavailable(struct grpc_call *call)
{
    struct api *a = grpc_call_method_arg(call);
    if (a->opts.store != NULL && store_is_up(a->opts.store))
        return false;
    grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "database unavailable; retry later");
    return true;
}

const char *api_workspace_name(const char *w)
{
    return (w == NULL || w[0] == '\0') ? "default" : w;
}

unsigned api_page_limit(uint32_t limit)
{
    if (limit == 0)
        return 100;
    return limit > 1000 ? 1000 : limit;
}

const char *api_u64(char *buf, uint64_t v)
{
    snprintf(buf, 24, "%llu", (unsigned long long)v);
    return buf;
}

bool api_principal_may_read(struct grpc_call *call, const struct store_result *r, int row)
{
    const struct api_principal *p = api_call_principal(call);
    (void)r;
    (void)row;
    return p != NULL && p->platform_admin;
}

/* ---- work that outlives its call ------------------------------------------- */

void api_detach(struct grpc_call *call, struct api_detached *d)
{
    struct api *a = grpc_call_method_arg(call);
    d->call = call;
    d->prev = NULL;
    d->next = a->detached;
    if (a->detached != NULL)
        a->detached->prev = d;
    a->detached = d;
}

void api_detach_end(struct api *a, struct api_detached *d)
{
    if (d->prev != NULL)
        d->prev->next = d->next;
    else
        a->detached = d->next;
    if (d->next != NULL)
        d->next->prev = d->prev;
    d->prev = d->next = NULL;
}

void api_detached_cancel(struct grpc_call *call)
{
    struct api *a = grpc_call_method_arg(call);
    for (struct api_detached *d = a->detached; d != NULL; d = d->next) {
        if (d->call == call) {
            d->call = NULL; /* the work finishes what it started */
            return;
        }
    }
    /* Nothing attached yet: still authorizing or resolving through api_query. */
    api_query_cancel(call);
}

int api_invalid(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gw_verrf(err, errlen, fmt, ap);
    va_end(ap);
    return GRPC_STATUS_INVALID_ARGUMENT;
}

const char *api_quote(struct api_quoted *q, const char *s)
{
    size_t o = 0, i;
    for (i = 0; s[i] != '\0' && i < API_QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\')
            o += (size_t)snprintf(q->s + o, sizeof(q->s) - o, "\\x%02x", c);
        else
            q->s[o++] = (char)c;
    }
    if (s[i] != '\0') {
        memcpy(q->s + o, "...", 3);
        o += 3;
    }
    q->s[o] = '\0';
    return q->s;
}
