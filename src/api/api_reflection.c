/* grpc.reflection.v1alpha.ServerReflection over the FileDescriptorSet that
 * the build embeds (gen/descriptor_set.c), so grpcurl-style tools need no
 * .proto files. */
#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

extern const unsigned char gw_descriptor_set[];
extern const size_t gw_descriptor_set_len;

struct refl_symbol {
    char *name; /* fully qualified, no leading dot */
    size_t file;
};

struct reflection_index {
    Google__Protobuf__FileDescriptorSet *set;
    ProtobufCBinaryData *bytes; /* serialized FileDescriptorProto per file */
    struct refl_symbol *syms;
    size_t n_syms, cap_syms;
};

static void add_symbol(struct reflection_index *ix, const char *prefix, const char *name,
                       size_t file)
{
    if (ix->n_syms == ix->cap_syms) {
        ix->cap_syms = ix->cap_syms ? ix->cap_syms * 2 : 256;
        ix->syms = gw_xrealloc(ix->syms, ix->cap_syms * sizeof(*ix->syms));
    }
    ix->syms[ix->n_syms].name = prefix[0] ? gw_xasprintf("%s.%s", prefix, name) : gw_xstrdup(name);
    ix->syms[ix->n_syms].file = file;
    ix->n_syms++;
}

static void index_message(struct reflection_index *ix, const char *prefix,
                          const Google__Protobuf__DescriptorProto *m, size_t file, int depth)
{
    add_symbol(ix, prefix, m->name, file);
    if (depth > 32)
        return;
    char *full = prefix[0] ? gw_xasprintf("%s.%s", prefix, m->name) : gw_xstrdup(m->name);
    for (size_t i = 0; i < m->n_nested_type; i++)
        index_message(ix, full, m->nested_type[i], file, depth + 1);
    for (size_t i = 0; i < m->n_enum_type; i++)
        add_symbol(ix, full, m->enum_type[i]->name, file);
    free(full);
}

static void index_file(struct reflection_index *ix, size_t fi)
{
    const Google__Protobuf__FileDescriptorProto *f = ix->set->file[fi];
    const char *pkg = f->package ? f->package : "";
    for (size_t i = 0; i < f->n_message_type; i++)
        index_message(ix, pkg, f->message_type[i], fi, 0);
    for (size_t i = 0; i < f->n_enum_type; i++)
        add_symbol(ix, pkg, f->enum_type[i]->name, fi);
    for (size_t i = 0; i < f->n_service; i++) {
        const Google__Protobuf__ServiceDescriptorProto *s = f->service[i];
        add_symbol(ix, pkg, s->name, fi);
        char *svc = pkg[0] ? gw_xasprintf("%s.%s", pkg, s->name) : gw_xstrdup(s->name);
        for (size_t j = 0; j < s->n_method; j++)
            add_symbol(ix, svc, s->method[j]->name, fi);
        free(svc);
    }
    for (size_t i = 0; i < f->n_extension; i++)
        add_symbol(ix, pkg, f->extension[i]->name, fi);
}

static int sym_cmp(const void *a, const void *b)
{
    return strcmp(((const struct refl_symbol *)a)->name, ((const struct refl_symbol *)b)->name);
}

struct reflection_index *api_reflection_index_new(void)
{
    struct reflection_index *ix = gw_xcalloc(1, sizeof(*ix));
    ix->set = google__protobuf__file_descriptor_set__unpack(NULL, gw_descriptor_set_len,
                                                            gw_descriptor_set);
    if (ix->set == NULL) {
        log_error("reflection.bad_descriptor_set");
        free(ix);
        return NULL;
    }
    ix->bytes = gw_xcalloc(ix->set->n_file + 1, sizeof(*ix->bytes));
    for (size_t i = 0; i < ix->set->n_file; i++) {
        const ProtobufCMessage *m = &ix->set->file[i]->base;
        ix->bytes[i].len = protobuf_c_message_get_packed_size(m);
        ix->bytes[i].data = gw_xmalloc(ix->bytes[i].len + 1);
        protobuf_c_message_pack(m, ix->bytes[i].data);
        index_file(ix, i);
    }
    qsort(ix->syms, ix->n_syms, sizeof(*ix->syms), sym_cmp);
    return ix;
}

void api_reflection_index_free(struct reflection_index *ix)
{
    if (ix == NULL)
        return;
    for (size_t i = 0; i < ix->n_syms; i++)
        free(ix->syms[i].name);
    free(ix->syms);
    for (size_t i = 0; i < ix->set->n_file; i++)
        free(ix->bytes[i].data);
    free(ix->bytes);
    google__protobuf__file_descriptor_set__free_unpacked(ix->set, NULL);
    free(ix);
}

static long find_file(const struct reflection_index *ix, const char *name)
{
    for (size_t i = 0; i < ix->set->n_file; i++)
        if (strcmp(ix->set->file[i]->name, name) == 0)
            return (long)i;
    return -1;
}

static long find_symbol(const struct reflection_index *ix, const char *name)
{
    struct refl_symbol key = {.name = (char *)name};
    const struct refl_symbol *s = bsearch(&key, ix->syms, ix->n_syms, sizeof(*ix->syms), sym_cmp);
    return s ? (long)s->file : -1;
}

/* The file and, depth first, every file it depends on, each once. */
static void collect_files(const struct reflection_index *ix, size_t fi, bool *seen, size_t *order,
                          size_t *n)
{
    if (seen[fi])
        return;
    seen[fi] = true;
    order[(*n)++] = fi;
    const Google__Protobuf__FileDescriptorProto *f = ix->set->file[fi];
    for (size_t i = 0; i < f->n_dependency; i++) {
        long d = find_file(ix, f->dependency[i]);
        if (d >= 0)
            collect_files(ix, (size_t)d, seen, order, n);
    }
}

static long find_extension(const struct reflection_index *ix, const char *type, int32_t number)
{
    for (size_t i = 0; i < ix->set->n_file; i++) {
        const Google__Protobuf__FileDescriptorProto *f = ix->set->file[i];
        for (size_t j = 0; j < f->n_extension; j++) {
            const char *ext = f->extension[j]->extendee;
            if (ext && ext[0] == '.')
                ext++;
            if (ext && strcmp(ext, type) == 0 && f->extension[j]->number == number)
                return (long)i;
        }
    }
    return -1;
}

struct refl_reply {
    Grpc__Reflection__V1alpha__ServerReflectionResponse resp;
    Grpc__Reflection__V1alpha__FileDescriptorResponse files;
    Grpc__Reflection__V1alpha__ErrorResponse error;
    Grpc__Reflection__V1alpha__ListServiceResponse list;
    Grpc__Reflection__V1alpha__ExtensionNumberResponse exts;
};

static void reply_error(struct refl_reply *r, int code, const char *msg)
{
    grpc__reflection__v1alpha__error_response__init(&r->error);
    r->error.error_code = code;
    r->error.error_message = (char *)msg;
    r->resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    r->resp.error_response = &r->error;
}

static void reply_files(struct grpc_call *call, const struct reflection_index *ix,
                        struct refl_reply *r, long fi)
{
    if (fi < 0) {
        reply_error(r, GRPC_STATUS_NOT_FOUND, "not found");
        return;
    }
    bool *seen = grpc_call_scratch_alloc(call, ix->set->n_file);
    size_t *order = grpc_call_scratch_alloc(call, ix->set->n_file * sizeof(size_t));
    size_t n = 0;
    memset(seen, 0, ix->set->n_file);
    collect_files(ix, (size_t)fi, seen, order, &n);
    grpc__reflection__v1alpha__file_descriptor_response__init(&r->files);
    r->files.n_file_descriptor_proto = n;
    r->files.file_descriptor_proto = grpc_call_scratch_alloc(call, n * sizeof(ProtobufCBinaryData));
    for (size_t i = 0; i < n; i++)
        r->files.file_descriptor_proto[i] = ix->bytes[order[i]];
    r->resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    r->resp.file_descriptor_response = &r->files;
}

/* Services listed are those the server actually routes. */
static void reply_services(struct grpc_call *call, struct api *a, struct refl_reply *r)
{
    const struct reflection_index *ix = a->refl;
    size_t cap = 0, n = 0;
    for (size_t i = 0; i < ix->set->n_file; i++)
        cap += ix->set->file[i]->n_service;
    Grpc__Reflection__V1alpha__ServiceResponse *svcs =
        grpc_call_scratch_alloc(call, (cap + 1) * sizeof(*svcs));
    Grpc__Reflection__V1alpha__ServiceResponse **ptrs =
        grpc_call_scratch_alloc(call, (cap + 1) * sizeof(*ptrs));
    for (size_t i = 0; i < ix->set->n_file; i++) {
        const Google__Protobuf__FileDescriptorProto *f = ix->set->file[i];
        for (size_t j = 0; j < f->n_service; j++) {
            const Google__Protobuf__ServiceDescriptorProto *s = f->service[j];
            bool routed = false;
            for (size_t k = 0; k < s->n_method && !routed; k++) {
                char *path = gw_xasprintf("/%s%s%s/%s", f->package ? f->package : "",
                                          f->package && f->package[0] ? "." : "", s->name,
                                          s->method[k]->name);
                routed = grpc_server_find_method(a->srv, path, strlen(path)) != NULL;
                free(path);
            }
            if (!routed)
                continue;
            grpc__reflection__v1alpha__service_response__init(&svcs[n]);
            svcs[n].name = grpc_call_scratch_alloc(call, strlen(f->package) + strlen(s->name) + 2);
            strcpy(svcs[n].name, f->package);
            if (f->package[0])
                strcat(svcs[n].name, ".");
            strcat(svcs[n].name, s->name);
            ptrs[n] = &svcs[n];
            n++;
        }
    }
    grpc__reflection__v1alpha__list_service_response__init(&r->list);
    r->list.n_service = n;
    r->list.service = ptrs;
    r->resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
    r->resp.list_services_response = &r->list;
}

static void reply_extension_numbers(struct grpc_call *call, const struct reflection_index *ix,
                                    struct refl_reply *r, const char *type)
{
    if (find_symbol(ix, type) < 0) {
        reply_error(r, GRPC_STATUS_NOT_FOUND, "type not found");
        return;
    }
    grpc__reflection__v1alpha__extension_number_response__init(&r->exts);
    r->exts.base_type_name = (char *)type;
    size_t cap = 0;
    for (size_t i = 0; i < ix->set->n_file; i++)
        cap += ix->set->file[i]->n_extension;
    r->exts.extension_number = grpc_call_scratch_alloc(call, (cap + 1) * sizeof(int32_t));
    for (size_t i = 0; i < ix->set->n_file; i++) {
        const Google__Protobuf__FileDescriptorProto *f = ix->set->file[i];
        for (size_t j = 0; j < f->n_extension; j++) {
            const char *ext = f->extension[j]->extendee;
            if (ext && ext[0] == '.')
                ext++;
            if (ext && strcmp(ext, type) == 0)
                r->exts.extension_number[r->exts.n_extension_number++] = f->extension[j]->number;
        }
    }
    r->resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
    r->resp.all_extension_numbers_response = &r->exts;
}

/* Replies are built in scratch memory, released when this returns: a long
 * reflection stream costs nothing per request once answered. */
static void reflection_message(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    Grpc__Reflection__V1alpha__ServerReflectionRequest *req = msg;
    struct refl_reply r;
    grpc__reflection__v1alpha__server_reflection_response__init(&r.resp);
    r.resp.valid_host = req->host;
    r.resp.original_request = req;

    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        reply_files(call, a->refl, &r, find_file(a->refl, req->file_by_filename));
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        reply_files(call, a->refl, &r, find_symbol(a->refl, req->file_containing_symbol));
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        reply_files(call, a->refl, &r,
                    find_extension(a->refl, req->file_containing_extension->containing_type,
                                   req->file_containing_extension->extension_number));
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        reply_extension_numbers(call, a->refl, &r, req->all_extension_numbers_of_type);
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        reply_services(call, a, &r);
        break;
    default:
        reply_error(&r, GRPC_STATUS_INVALID_ARGUMENT, "request has no message_request set");
        break;
    }
    /* A client that asks faster than it reads is paused until it drains. */
    if (grpc_call_send(call, &r.resp.base) == GRPC_SEND_FULL)
        grpc_call_pause_recv(call, true);
}

static void reflection_writable(struct grpc_call *call)
{
    grpc_call_pause_recv(call, false);
}

static void reflection_half_close(struct grpc_call *call)
{
    grpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

static const struct grpc_handler reflection_h = {
    .on_message = reflection_message,
    .on_half_close = reflection_half_close,
    .on_writable = reflection_writable,
};

const struct grpc_method api_reflection_methods[] = {
    {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", GRPC_BIDI,
     &grpc__reflection__v1alpha__server_reflection_request__descriptor,
     &grpc__reflection__v1alpha__server_reflection_response__descriptor, &reflection_h, NULL,
     API_AUTH_UNAUTHENTICATED},
    {.path = NULL},
};
