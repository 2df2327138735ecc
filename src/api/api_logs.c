/* Sandbox logs (semantics.md §10-11, §19): the per-sandbox in-memory
 * buffers, their watchers (WatchSandbox follow_logs, see api_events.c),
 * and the GetSandboxLogs / PushSandboxLogs handlers.
 *
 * Buffers live in a hash table keyed by the lower-case sandbox id; each is
 * a ring of owned line copies bounded by count and bytes (api_int.h). A
 * watcher is a cursor into its sandbox's ring, so a slow reader costs no
 * memory beyond the ring: when the ring evicts lines the reader had not
 * taken yet, the reader learns how many (api_logs_watch_next) and says so
 * on its stream. An entry goes away once it holds no line and nobody
 * watches or pushes. */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_int.h"
#include "openshell.pb-c.h"
#include "store/store.h"

typedef Openshell__V1__SandboxLogLine log_line;
typedef Openshell__V1__SandboxLogLine__FieldsEntry log_field;

struct push_op;

/* One sandbox's buffer and the streams attached to it. */
struct log_entry {
    char id[37]; /* lower-case UUID */
    struct api_log_ring ring;
    struct api_log_watch *watchers;
    struct push_op *pushers; /* PushSandboxLogs streams past their check */
    unsigned notifying;      /* inside notify(): watchers are only marked dead */
    struct log_entry *hnext;
};

struct api_logs {
    struct log_entry **buckets; /* |nbuckets| chains, a power of two */
    size_t nbuckets;
    size_t n;
};

struct api_log_watch {
    struct api *a;
    struct log_entry *e; /* NULL once the registry was freed under it */
    api_log_watch_fn fn;
    void *arg;
    struct api_logs_filter f;
    uint64_t cursor;    /* next sequence number to look at */
    uint64_t live_from; /* lines below this belong to the replay */
    uint64_t dropped;   /* evicted before taken, not reported yet */
    bool dead;          /* unwatched during notify(): freed after it */
    struct api_log_watch *prev, *next;
};

/* ---- filters ---------------------------------------------------------------------- */

int api_logs_level_rank(const char *level)
{
    static const struct {
        const char *name;
        int rank;
    } ranks[] = {{"ERROR", 0}, {"WARN", 1}, {"INFO", 2}, {"OCSF", 2}, {"DEBUG", 3}, {"TRACE", 4}};
    if (level == NULL)
        return 5;
    for (size_t i = 0; i < GW_ARRAY_LEN(ranks); i++)
        if (strcasecmp(level, ranks[i].name) == 0)
            return ranks[i].rank;
    return 5;
}

bool api_logs_filter_pass(const struct api_logs_filter *f, const log_line *line)
{
    if (f->since_ms > 0 && line->timestamp_ms < f->since_ms)
        return false;
    if (f->n_sources > 0) {
        const char *src =
            (line->source == NULL || line->source[0] == '\0') ? "gateway" : line->source;
        size_t i = 0;
        while (i < f->n_sources && strcmp(f->sources[i], src) != 0)
            i++;
        if (i == f->n_sources)
            return false;
    }
    if (f->min_level != NULL && f->min_level[0] != '\0' &&
        api_logs_level_rank(line->level) > api_logs_level_rank(f->min_level))
        return false;
    return true;
}

/* ---- copies ----------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at |p| (|n| bytes left), 0 if none. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/* Bytes of |s| kept under |max|: cut before the character that would
 * straddle the limit (at most 3 bytes back, so garbage cannot stretch it). */
static size_t clip_len(const char *s, size_t max)
{
    if (s == NULL)
        return 0;
    size_t n = strnlen(s, max + 1);
    if (n <= max)
        return n;
    n = max;
    for (int k = 0; k < 3 && n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80; k++)
        n--;
    return n;
}

/* Copies |n| bytes of |s| to |*pos| as a C string with every byte that is
 * not part of valid UTF-8 replaced by '?'; returns the copy. */
static char *put_text(char **pos, const char *s, size_t n)
{
    char *out = *pos;
    if (n > 0)
        memcpy(out, s, n);
    out[n] = '\0';
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq((const unsigned char *)out + i, n - i);
        if (k == 0) {
            out[i] = '?';
            k = 1;
        }
        i += k;
    }
    *pos += n + 1;
    return out;
}

enum { T_ID, T_LEVEL, T_TARGET, T_MESSAGE, T_SOURCE, T_N };

log_line *api_logs_line_copy(const char *sandbox_id, const log_line *line, const char *source,
                             size_t *bytes)
{
    size_t nf = GW_MIN(line->n_fields, (size_t)API_LOGS_FIELDS_MAX);
    const char *text[T_N] = {sandbox_id, line->level, line->target, line->message,
                             source != NULL ? source : line->source};
    static const size_t text_max[T_N] = {64, API_LOGS_TEXT_MAX, API_LOGS_TEXT_MAX,
                                         API_LOGS_MESSAGE_MAX, API_LOGS_TEXT_MAX};
    size_t tlen[T_N], klen[API_LOGS_FIELDS_MAX], vlen[API_LOGS_FIELDS_MAX];
    /* One block: the message, its field entries and pointers, then text. */
    size_t size = sizeof(log_line) + nf * (sizeof(log_field) + sizeof(log_field *));
    for (int i = 0; i < T_N; i++) {
        tlen[i] = clip_len(text[i], text_max[i]);
        size += tlen[i] + 1;
    }
    for (size_t i = 0; i < nf; i++) {
        const log_field *fe = line->fields[i];
        klen[i] = fe != NULL ? clip_len(fe->key, API_LOGS_KEY_MAX) : 0;
        vlen[i] = fe != NULL ? clip_len(fe->value, API_LOGS_VALUE_MAX) : 0;
        size += klen[i] + vlen[i] + 2;
    }
    char *block = gw_xmalloc(size);
    log_line *out = (log_line *)block;
    log_field *entries = (log_field *)(block + sizeof(log_line));
    log_field **ptrs = (log_field **)(entries + nf);
    char *pos = (char *)(ptrs + nf);

    openshell__v1__sandbox_log_line__init(out);
    out->timestamp_ms = line->timestamp_ms;
    out->sandbox_id = put_text(&pos, text[T_ID], tlen[T_ID]);
    out->level = put_text(&pos, text[T_LEVEL], tlen[T_LEVEL]);
    out->target = put_text(&pos, text[T_TARGET], tlen[T_TARGET]);
    out->message = put_text(&pos, text[T_MESSAGE], tlen[T_MESSAGE]);
    out->source = put_text(&pos, text[T_SOURCE], tlen[T_SOURCE]);
    for (size_t i = 0; i < nf; i++) {
        const log_field *fe = line->fields[i];
        openshell__v1__sandbox_log_line__fields_entry__init(&entries[i]);
        entries[i].key = put_text(&pos, fe != NULL ? fe->key : NULL, klen[i]);
        entries[i].value = put_text(&pos, fe != NULL ? fe->value : NULL, vlen[i]);
        ptrs[i] = &entries[i];
    }
    out->n_fields = nf;
    out->fields = nf > 0 ? ptrs : NULL;
    GW_ASSERT(pos == block + size);
    if (bytes != NULL)
        *bytes = size;
    return out;
}

/* ---- ring ------------------------------------------------------------------------- */

void api_log_ring_init(struct api_log_ring *r)
{
    memset(r, 0, sizeof(*r));
}

uint64_t api_log_ring_first_seq(const struct api_log_ring *r)
{
    return r->next_seq - r->len;
}

/* Size of a held copy, recomputed rather than stored: the block layout of
 * api_logs_line_copy() is a pure function of its strings. */
static size_t line_bytes(const log_line *l)
{
    size_t size = sizeof(log_line) + l->n_fields * (sizeof(log_field) + sizeof(log_field *));
    size += strlen(l->sandbox_id) + strlen(l->level) + strlen(l->target) + strlen(l->message) +
            strlen(l->source) + 5;
    for (size_t i = 0; i < l->n_fields; i++)
        size += strlen(l->fields[i]->key) + strlen(l->fields[i]->value) + 2;
    return size;
}

static void ring_evict_oldest(struct api_log_ring *r)
{
    log_line *old = r->slot[r->head];
    r->bytes -= line_bytes(old);
    free(old);
    r->slot[r->head] = NULL;
    r->head = (r->head + 1) % r->cap;
    r->len--;
}

void api_log_ring_clear(struct api_log_ring *r)
{
    while (r->len > 0)
        ring_evict_oldest(r);
    free(r->slot);
    r->slot = NULL;
    r->cap = r->head = 0;
    r->bytes = 0;
}

/* Grows the slot array (doubling, up to API_LOGS_LINES_MAX), oldest first. */
static void ring_grow(struct api_log_ring *r)
{
    size_t cap = r->cap == 0 ? 16 : GW_MIN(r->cap * 2, (size_t)API_LOGS_LINES_MAX);
    log_line **slot = gw_xcalloc(cap, sizeof(*slot));
    for (size_t i = 0; i < r->len; i++)
        slot[i] = r->slot[(r->head + i) % r->cap];
    free(r->slot);
    r->slot = slot;
    r->cap = cap;
    r->head = 0;
}

void api_log_ring_push(struct api_log_ring *r, log_line *line, size_t bytes)
{
    if (r->len == API_LOGS_LINES_MAX)
        ring_evict_oldest(r);
    else if (r->len == r->cap)
        ring_grow(r);
    r->slot[(r->head + r->len) % r->cap] = line;
    r->len++;
    r->bytes += bytes;
    r->next_seq++;
    while (r->bytes > API_LOGS_BYTES_MAX && r->len > 1)
        ring_evict_oldest(r);
}

const log_line *api_log_ring_at(const struct api_log_ring *r, uint64_t seq)
{
    uint64_t first = api_log_ring_first_seq(r);
    if (seq < first || seq >= r->next_seq)
        return NULL;
    return r->slot[(r->head + (size_t)(seq - first)) % r->cap];
}

/* ---- registry --------------------------------------------------------------------- */

static uint64_t hash_id(const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

static void table_grow(struct api_logs *lg)
{
    size_t nb = lg->nbuckets == 0 ? 64 : lg->nbuckets * 2;
    struct log_entry **b = gw_xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < lg->nbuckets; i++) {
        struct log_entry *e = lg->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->hnext;
            size_t k = hash_id(e->id) & (nb - 1);
            e->hnext = b[k];
            b[k] = e;
        }
    }
    free(lg->buckets);
    lg->buckets = b;
    lg->nbuckets = nb;
}

/* The entry of |sandbox_id| (any case), created when |create|. NULL when
 * absent, or when the id is not a UUID (every sandbox id is one). */
static struct log_entry *entry_get(struct api *a, const char *sandbox_id, bool create)
{
    char key[37];
    if (!gw_uuid_valid(sandbox_id))
        return NULL;
    for (int i = 0; i < 37; i++)
        key[i] = (char)((sandbox_id[i] >= 'A' && sandbox_id[i] <= 'F') ? sandbox_id[i] - 'A' + 'a'
                                                                       : sandbox_id[i]);
    struct api_logs *lg = a->logs;
    if (lg == NULL) {
        if (!create)
            return NULL;
        lg = a->logs = gw_xcalloc(1, sizeof(*lg));
    }
    if (lg->nbuckets > 0) {
        for (struct log_entry *e = lg->buckets[hash_id(key) & (lg->nbuckets - 1)]; e != NULL;
             e = e->hnext)
            if (memcmp(e->id, key, 37) == 0)
                return e;
    }
    if (!create)
        return NULL;
    if (lg->n >= lg->nbuckets)
        table_grow(lg);
    struct log_entry *e = gw_xcalloc(1, sizeof(*e));
    memcpy(e->id, key, 37);
    api_log_ring_init(&e->ring);
    size_t k = hash_id(key) & (lg->nbuckets - 1);
    e->hnext = lg->buckets[k];
    lg->buckets[k] = e;
    lg->n++;
    return e;
}

/* Frees |e| when nothing needs it any more. */
static void entry_maybe_free(struct api *a, struct log_entry *e)
{
    if (e->ring.len > 0 || e->watchers != NULL || e->pushers != NULL || e->notifying > 0)
        return;
    struct api_logs *lg = a->logs;
    struct log_entry **pp = &lg->buckets[hash_id(e->id) & (lg->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lg->n--;
    api_log_ring_clear(&e->ring);
    free(e);
}

static void watch_unlink(struct log_entry *e, struct api_log_watch *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        e->watchers = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    free(w);
}

/* Tells every watcher that lines arrived. Watchers leaving meanwhile are
 * only marked, and freed once the walk is over. */
static void notify(struct api *a, struct log_entry *e)
{
    e->notifying++;
    for (struct api_log_watch *w = e->watchers; w != NULL; w = w->next)
        if (!w->dead)
            w->fn(w, w->arg);
    e->notifying--;
    if (e->notifying > 0)
        return;
    struct api_log_watch *w = e->watchers, *next;
    for (; w != NULL; w = next) {
        next = w->next;
        if (w->dead)
            watch_unlink(e, w);
    }
    entry_maybe_free(a, e);
}

void api_logs_append(struct api *a, const char *sandbox_id, const log_line *line)
{
    struct log_entry *e = entry_get(a, sandbox_id, true);
    if (e == NULL) {
        log_warn("logs.bad_sandbox_id", LF_STR("sandbox_id", sandbox_id ? sandbox_id : ""));
        return;
    }
    bool no_source = line->source == NULL || line->source[0] == '\0';
    size_t bytes;
    log_line *copy = api_logs_line_copy(e->id, line, no_source ? "gateway" : NULL, &bytes);
    if (copy->timestamp_ms == 0)
        copy->timestamp_ms = gw_now_wall_ms();
    api_log_ring_push(&e->ring, copy, bytes);
    notify(a, e);
}

static void push_end(struct push_op *op, int status, const char *msg);

void api_logs_drop(struct api *a, const char *sandbox_id)
{
    struct log_entry *e = entry_get(a, sandbox_id, false);
    if (e == NULL)
        return;
    api_log_ring_clear(&e->ring);
    /* Watchers keep their place: nothing they missed is reported lost. */
    for (struct api_log_watch *w = e->watchers; w != NULL; w = w->next) {
        w->cursor = e->ring.next_seq;
        w->dropped = 0;
    }
    /* The sandbox is gone: its supervisor's streams end (they unlink;
     * the hold keeps |e| until the loop is done). */
    e->notifying++;
    while (e->pushers != NULL)
        push_end(e->pushers, GRPC_STATUS_NOT_FOUND, "sandbox not found");
    e->notifying--;
    entry_maybe_free(a, e);
}

void api_logs_free(struct api *a)
{
    struct api_logs *lg = a->logs;
    if (lg == NULL)
        return;
    for (size_t i = 0; i < lg->nbuckets; i++) {
        struct log_entry *e = lg->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->hnext;
            /* Every call ended before the api is freed; whatever still
             * points here must not touch freed memory. */
            for (struct api_log_watch *w = e->watchers; w != NULL; w = w->next)
                w->e = NULL;
            GW_ASSERT(e->pushers == NULL);
            api_log_ring_clear(&e->ring);
            free(e);
        }
    }
    free(lg->buckets);
    free(lg);
    a->logs = NULL;
}

/* ---- watchers --------------------------------------------------------------------- */

struct api_log_watch *api_logs_watch(struct api *a, const char *sandbox_id, uint32_t tail,
                                     const struct api_logs_filter *f, api_log_watch_fn fn,
                                     void *arg)
{
    struct api_log_watch *w = gw_xcalloc(1, sizeof(*w));
    w->a = a;
    w->fn = fn;
    w->arg = arg;
    w->f = *f;
    w->e = entry_get(a, sandbox_id, true);
    if (w->e == NULL) /* not a UUID: nothing can ever be appended for it */
        return w;
    const struct api_log_ring *r = &w->e->ring;
    uint64_t n = tail == 0 ? API_LOGS_REPLAY_DEFAULT : GW_MIN(tail, API_LOGS_LINES_MAX);
    uint64_t first = api_log_ring_first_seq(r);
    w->live_from = r->next_seq;
    w->cursor = r->next_seq - GW_MIN(n, r->next_seq - first);
    w->next = w->e->watchers;
    if (w->next != NULL)
        w->next->prev = w;
    w->e->watchers = w;
    return w;
}

const log_line *api_logs_watch_next(struct api_log_watch *w, bool replay_only, uint64_t *dropped)
{
    const log_line *found = NULL;
    if (w->e != NULL && !w->dead) {
        const struct api_log_ring *r = &w->e->ring;
        uint64_t first = api_log_ring_first_seq(r);
        if (w->cursor < first) {
            w->dropped += first - w->cursor;
            w->cursor = first;
        }
        uint64_t end = replay_only ? GW_MIN(w->live_from, r->next_seq) : r->next_seq;
        while (found == NULL && w->cursor < end) {
            const log_line *l = api_log_ring_at(r, w->cursor);
            struct api_logs_filter f = w->f;
            if (w->cursor >= w->live_from)
                f.since_ms = 0; /* the time filter selects replayed lines only */
            w->cursor++;
            if (api_logs_filter_pass(&f, l))
                found = l;
        }
    }
    *dropped = w->dropped;
    w->dropped = 0;
    return found;
}

bool api_logs_watch_replaying(const struct api_log_watch *w)
{
    return w->e != NULL && w->cursor < w->live_from && w->cursor < w->e->ring.next_seq;
}

void api_logs_unwatch(struct api_log_watch *w)
{
    if (w == NULL)
        return;
    struct log_entry *e = w->e;
    struct api *a = w->a;
    if (e == NULL) {
        free(w);
        return;
    }
    if (e->notifying > 0) {
        w->dead = true;
        return;
    }
    watch_unlink(e, w);
    entry_maybe_free(a, e);
}

/* ---- GetSandboxLogs ----------------------------------------------------------------- */

static void get_logs_found(struct grpc_call *call, const struct store_result *r, void *arg)
{
    Openshell__V1__GetSandboxLogsRequest *req = arg;
    struct api *a = grpc_call_method_arg(call);
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0 || !api_principal_may_read(call, r, 0)) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    Openshell__V1__GetSandboxLogsResponse resp = OPENSHELL__V1__GET_SANDBOX_LOGS_RESPONSE__INIT;
    struct log_entry *e = entry_get(a, req->sandbox_id, false);
    if (e != NULL) {
        const struct api_log_ring *ring = &e->ring;
        uint64_t want = req->lines == 0 ? API_LOGS_LINES_MAX : req->lines;
        uint64_t start = ring->next_seq - GW_MIN(want, (uint64_t)ring->len);
        struct api_logs_filter f = {
            .since_ms = req->since_ms,
            .sources = (const char *const *)req->sources,
            .n_sources = req->n_sources,
            .min_level = req->min_level,
        };
        /* The reply borrows the held copies: it is packed before returning. */
        resp.logs = grpc_call_alloc(call, (ring->next_seq - start + 1) * sizeof(*resp.logs));
        for (uint64_t seq = start; seq < ring->next_seq; seq++) {
            const log_line *l = api_log_ring_at(ring, seq);
            if (api_logs_filter_pass(&f, l))
                resp.logs[resp.n_logs++] = (log_line *)l;
        }
        resp.buffer_total = (uint32_t)(ring->next_seq - start);
    }
    grpc_call_reply(call, &resp.base);
}

static void get_sandbox_logs(struct grpc_call *call, void *msg)
{
    Openshell__V1__GetSandboxLogsRequest *req = msg;
    if (req->sandbox_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        return;
    }
    if (!gw_uuid_valid(req->sandbox_id)) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    if (api_store_unavailable(call))
        return;
    const char *params[] = {req->sandbox_id};
    api_query(call, &store_sb_get_by_id, params, NULL, get_logs_found, req);
}

/* ---- PushSandboxLogs ---------------------------------------------------------------- *
 *
 * The first batch naming a sandbox fixes the stream's sandbox: it must be
 * the caller's own (PERMISSION_DENIED) and exist (NOT_FOUND, one store
 * read, during which reading pauses and the batch waits packed). Later
 * batches must name the same sandbox. Batches are applied as they arrive,
 * synchronously, so HTTP/2 flow control is the only queue. */

struct push_op {
    struct grpc_call *call; /* NULL once the call ended while the check ran */
    struct api *a;
    char sandbox_id[37]; /* as the caller wrote it; "" until the first batch */
    bool checking;       /* the existence read is in flight */
    uint8_t *held;       /* the first batch, packed, while checking */
    size_t held_len;
    struct log_entry *e; /* once checked: on e->pushers */
    struct push_op *prev, *next;
};

static void push_free(struct push_op *op)
{
    struct log_entry *e = op->e;
    struct api *a = op->a;
    if (e != NULL) {
        if (op->prev != NULL)
            op->prev->next = op->next;
        else
            e->pushers = op->next;
        if (op->next != NULL)
            op->next->prev = op->prev;
    }
    free(op->held);
    free(op);
    if (e != NULL)
        entry_maybe_free(a, e);
}

/* Finishes the stream and forgets it (also from api_logs_drop). */
static void push_end(struct push_op *op, int status, const char *msg)
{
    struct grpc_call *call = op->call;
    grpc_call_set_user(call, NULL);
    push_free(op);
    grpc_call_finish(call, status, msg);
}

/* Keeps the first API_LOGS_BATCH_MAX lines, stamped source "sandbox" and
 * the stream's sandbox id, then wakes the watchers once. */
static void push_apply(struct push_op *op, const Openshell__V1__PushSandboxLogsRequest *req)
{
    struct log_entry *e = op->e;
    size_t n = GW_MIN(req->n_logs, (size_t)API_LOGS_BATCH_MAX);
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        size_t bytes;
        log_line *copy = api_logs_line_copy(e->id, req->logs[i], "sandbox", &bytes);
        api_log_ring_push(&e->ring, copy, bytes);
    }
    if (req->n_logs > n)
        log_debug("logs.batch_cut", LF_STR("sandbox_id", e->id), LF_UINT("lines", req->n_logs),
                  LF_UINT("kept", n));
    notify(op->a, e);
}

static void push_checked(const struct store_result *r, void *arg)
{
    struct push_op *op = arg;
    op->checking = false;
    if (op->call == NULL) { /* the client went away meanwhile */
        push_free(op);
        return;
    }
    struct grpc_call *call = op->call;
    if (r->status != STORE_OK) {
        grpc_call_set_user(call, NULL);
        push_free(op);
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        push_end(op, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    Openshell__V1__PushSandboxLogsRequest *req =
        openshell__v1__push_sandbox_logs_request__unpack(NULL, op->held_len, op->held);
    free(op->held);
    op->held = NULL;
    GW_ASSERT(req != NULL); /* we packed it */
    op->e = entry_get(op->a, op->sandbox_id, true);
    op->next = op->e->pushers;
    if (op->next != NULL)
        op->next->prev = op;
    op->e->pushers = op;
    push_apply(op, req);
    openshell__v1__push_sandbox_logs_request__free_unpacked(req, NULL);
    /* Last: resuming delivers held-back batches (and maybe the end) now. */
    grpc_call_pause_recv(call, false);
}

/* The first batch naming a sandbox: who may push, and does it exist. */
static void push_check(struct push_op *op, const Openshell__V1__PushSandboxLogsRequest *req)
{
    struct grpc_call *call = op->call;
    const struct api_principal *p = api_call_principal(call);
    if (p->kind != API_PRINCIPAL_SANDBOX || p->sandbox_id == NULL ||
        strcmp(p->sandbox_id, req->sandbox_id) != 0) {
        push_end(op, GRPC_STATUS_PERMISSION_DENIED,
                 "cross-sandbox access denied: the caller's token is for another sandbox");
        return;
    }
    if (!gw_uuid_valid(req->sandbox_id)) {
        push_end(op, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    snprintf(op->sandbox_id, sizeof(op->sandbox_id), "%s", req->sandbox_id);
    op->held_len = openshell__v1__push_sandbox_logs_request__get_packed_size(req);
    op->held = gw_xmalloc(op->held_len ? op->held_len : 1);
    openshell__v1__push_sandbox_logs_request__pack(req, op->held);
    const char *params[] = {op->sandbox_id};
    struct store *store = op->a->opts.store;
    if (store == NULL ||
        store_query(store, &store_sb_get_by_id, params, NULL, push_checked, op) != 0) {
        push_end(op, GRPC_STATUS_UNAVAILABLE, "database unavailable; retry later");
        return;
    }
    op->checking = true;
    grpc_call_pause_recv(call, true);
}

static void push_message(struct grpc_call *call, void *msg)
{
    Openshell__V1__PushSandboxLogsRequest *req = msg;
    struct push_op *op = grpc_call_user(call);
    if (op == NULL) {
        op = gw_xcalloc(1, sizeof(*op));
        op->call = call;
        op->a = grpc_call_method_arg(call);
        grpc_call_set_user(call, op);
    }
    if (req->sandbox_id[0] == '\0')
        return; /* skipped, as upstream */
    if (op->sandbox_id[0] == '\0') {
        push_check(op, req);
        return;
    }
    if (strcmp(req->sandbox_id, op->sandbox_id) != 0) {
        push_end(op, GRPC_STATUS_PERMISSION_DENIED,
                 "cross-sandbox access denied: a stream pushes for one sandbox only");
        return;
    }
    push_apply(op, req);
}

static void push_half_close(struct grpc_call *call)
{
    struct push_op *op = grpc_call_user(call);
    Openshell__V1__PushSandboxLogsResponse resp = OPENSHELL__V1__PUSH_SANDBOX_LOGS_RESPONSE__INIT;
    if (op != NULL) {
        grpc_call_set_user(call, NULL);
        push_free(op); /* never checking here: the end waits while paused */
    }
    grpc_call_reply(call, &resp.base);
}

static void push_cancel(struct grpc_call *call)
{
    struct push_op *op = grpc_call_user(call);
    if (op == NULL)
        return;
    grpc_call_set_user(call, NULL);
    if (op->checking)
        op->call = NULL; /* push_checked frees it */
    else
        push_free(op);
}

/* ---- registration ------------------------------------------------------------------- */

static const struct grpc_handler get_logs_h = {.on_message = get_sandbox_logs,
                                               .on_cancel = api_query_cancel};
static const struct grpc_handler push_logs_h = {
    .on_message = push_message, .on_half_close = push_half_close, .on_cancel = push_cancel};

const struct grpc_method api_logs_methods[] = {
    {"/openshell.v1.OpenShell/GetSandboxLogs", GRPC_UNARY,
     &openshell__v1__get_sandbox_logs_request__descriptor,
     &openshell__v1__get_sandbox_logs_response__descriptor, &get_logs_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/PushSandboxLogs", GRPC_CLIENT_STREAM,
     &openshell__v1__push_sandbox_logs_request__descriptor,
     &openshell__v1__push_sandbox_logs_response__descriptor, &push_logs_h, NULL, API_AUTH_SANDBOX},
    {.path = NULL},
};
