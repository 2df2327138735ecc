/* CreateSandbox validation and defaults, generated sandbox names, and the
 * public -> driver mapping (semantics.md §4 and §6; compute-v1.md, "Public
 * -> driver mapping"). Pure functions over generated messages: they read
 * the request, allocate through a struct api_alloc and never free. */
#include "api/api_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "compute_driver.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "labels/labels.h"
#include "openshell.pb-c.h"

/* semantics.md §6, "Validation limits" (bytes unless said otherwise). */
#define NAME_MAX_LEN        19
#define PROVIDERS_MAX       32
#define LOG_LEVEL_MAX       32
#define MAP_ENTRIES_MAX     128
#define MAP_KEY_MAX         256
#define MAP_VALUE_MAX       8192
#define ENV_TOTAL_MAX       (256 * 1024) /* key + value bytes of one environment map */
#define TEMPLATE_STRING_MAX 1024
#define STRUCT_ENCODED_MAX  65536 /* template.resources, template.driver_config */
#define POLICY_ENCODED_MAX  (256 * 1024)
#define COMMAND_ARGS_MAX    256
#define COMMAND_TOTAL_MAX   (256 * 1024)
#define COMMAND_ARG_MAX     (32 * 1024)

#define OK GRPC_STATUS_OK

/* ---- allocation ------------------------------------------------------------ */

static void *alloc_from_call(void *ctx, size_t n)
{
    return grpc_call_alloc(ctx, n);
}

static void *zalloc(const struct api_alloc *al, size_t n)
{
    void *p = al->alloc(al->ctx, n);
    memset(p, 0, n);
    return p;
}

static char *sdup(const struct api_alloc *al, const char *s)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s) + 1;
    char *p = al->alloc(al->ctx, n);
    memcpy(p, s, n);
    return p;
}

static void *msg_new(const struct api_alloc *al, const ProtobufCMessageDescriptor *d)
{
    void *m = al->alloc(al->ctx, d->sizeof_message);
    protobuf_c_message_init(d, m);
    return m;
}

static void *pb_alloc(void *data, size_t n)
{
    const struct api_alloc *al = data;
    return al->alloc(al->ctx, n);
}

static void pb_free(void *data, void *p)
{
    (void)data;
    (void)p; /* released with the whole allocator */
}

/* Deep copy of |m| in |al| through its encoding: no recursion of ours over
 * caller-controlled nesting, and the copy shares nothing with |m|. NULL
 * when the encoding does not decode again: protobuf-c accepts an unknown
 * field whose tag is an overlong encoding of field number 0, keeps it, and
 * writes it back canonically, which it then refuses (fuzz_sandbox_spec). */
static void *msg_clone(const struct api_alloc *al, const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = al->alloc(al->ctx, len ? len : 1);
    size_t packed = protobuf_c_message_pack(m, buf);
    GW_ASSERT(packed == len);
    ProtobufCAllocator pa = {.alloc = pb_alloc, .free = pb_free, .allocator_data = (void *)al};
    return protobuf_c_message_unpack(m->descriptor, &pa, len, buf);
}

/* ---- error messages -------------------------------------------------------- */

#define Q(s) API_QUOTE(s)

static const char *str0(const char *s)
{
    return s != NULL ? s : "";
}

/* ---- map<string, string> views --------------------------------------------- */

/* Every generated map entry is a message with char *key and char *value;
 * this reads any of them by offset. */
struct kv_map {
    const void *const *e;
    size_t n;
    size_t koff, voff;
};

#define KV_MAP(arr, count)                                                                         \
    ((struct kv_map){(const void *const *)(arr), (count), offsetof(__typeof__(**(arr)), key),      \
                     offsetof(__typeof__(**(arr)), value)})

static const char *kv_key(const struct kv_map *m, size_t i)
{
    return str0(*(char *const *)((const char *)m->e[i] + m->koff));
}

static const char *kv_value(const struct kv_map *m, size_t i)
{
    return str0(*(char *const *)((const char *)m->e[i] + m->voff));
}

/* A map being built: entries of |desc|, key/value at the given offsets. */
struct kv_out {
    void **e;
    size_t n;
    const ProtobufCMessageDescriptor *desc;
    size_t koff, voff;
};

#define KV_OUT(al, type, descriptor, cap)                                                          \
    ((struct kv_out){zalloc((al), ((cap) ? (cap) : 1) * sizeof(void *)), 0, (descriptor),          \
                     offsetof(type, key), offsetof(type, value)})

static void kv_put(const struct api_alloc *al, struct kv_out *o, const char *k, const char *v)
{
    char *m = msg_new(al, o->desc);
    *(char **)(m + o->koff) = sdup(al, k);
    *(char **)(m + o->voff) = sdup(al, v);
    o->e[o->n++] = m;
}

static void kv_copy(const struct api_alloc *al, struct kv_out *o, const struct kv_map *m)
{
    for (size_t i = 0; i < m->n; i++)
        kv_put(al, o, kv_key(m, i), kv_value(m, i));
}

/* ---- validation ------------------------------------------------------------- */

/* Entry count and key/value sizes of a map (upstream validate_string_map). */
static int check_map_sizes(const struct kv_map *m, const char *field, char *err, size_t errlen)
{
    if (m->n > MAP_ENTRIES_MAX)
        return api_invalid(err, errlen, "%s: %zu entries exceed the limit of %d", field, m->n,
                           MAP_ENTRIES_MAX);
    for (size_t i = 0; i < m->n; i++) {
        size_t kl = strlen(kv_key(m, i)), vl = strlen(kv_value(m, i));
        if (kl > MAP_KEY_MAX)
            return api_invalid(err, errlen, "%s: key '%s' is %zu bytes, limit %d", field,
                               Q(kv_key(m, i)), kl, MAP_KEY_MAX);
        if (vl > MAP_VALUE_MAX)
            return api_invalid(err, errlen, "%s: value of '%s' is %zu bytes, limit %d", field,
                               Q(kv_key(m, i)), vl, MAP_VALUE_MAX);
    }
    return OK;
}

static bool env_key_valid(const char *k)
{
    if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_'))
        return false;
    for (k++; *k != '\0'; k++)
        if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') ||
              *k == '_'))
            return false;
    return true;
}

/* Environment rules (semantics.md §6, "Environment maps"). A NUL inside a
 * value cannot be seen here: protobuf-c strings end at the first NUL. */
static int check_env(const struct kv_map *m, const char *field, char *err, size_t errlen)
{
    size_t total = 0;
    for (size_t i = 0; i < m->n; i++)
        total += strlen(kv_key(m, i)) + strlen(kv_value(m, i));
    if (total > ENV_TOTAL_MAX)
        return api_invalid(err, errlen, "%s: total size %zu bytes exceeds %d", field, total,
                           ENV_TOTAL_MAX);
    for (size_t i = 0; i < m->n; i++) {
        const char *k = kv_key(m, i);
        if (!env_key_valid(k))
            return api_invalid(err, errlen, "%s: key '%s' must match [A-Za-z_][A-Za-z0-9_]*", field,
                               Q(k));
        if (strncmp(k, "OPENSHELL_", 10) == 0)
            return api_invalid(err, errlen, "%s: key '%s' is reserved", field, Q(k));
        if (strpbrk(kv_value(m, i), "\r\n") != NULL)
            return api_invalid(err, errlen, "%s: value of '%s' contains CR or LF", field, Q(k));
    }
    return OK;
}

static int check_struct_size(const Google__Protobuf__Struct *s, const char *field, char *err,
                             size_t errlen)
{
    if (s == NULL)
        return OK;
    size_t n = protobuf_c_message_get_packed_size(&s->base);
    if (n > STRUCT_ENCODED_MAX)
        return api_invalid(err, errlen, "%s: encoded size %zu exceeds %d bytes", field, n,
                           STRUCT_ENCODED_MAX);
    return OK;
}

static int check_template(const Openshell__V1__SandboxTemplate *t, char *err, size_t errlen)
{
    const struct {
        const char *field, *value;
    } strs[] = {
        {"spec.template.image", t->image},
        {"spec.template.runtime_class_name", t->runtime_class_name},
        {"spec.template.agent_socket", t->agent_socket},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(strs); i++) {
        size_t n = strlen(str0(strs[i].value));
        if (n > TEMPLATE_STRING_MAX)
            return api_invalid(err, errlen, "%s: %zu bytes exceed the limit of %d", strs[i].field,
                               n, TEMPLATE_STRING_MAX);
    }
    struct kv_map labels = KV_MAP(t->labels, t->n_labels);
    struct kv_map annotations = KV_MAP(t->annotations, t->n_annotations);
    struct kv_map env = KV_MAP(t->environment, t->n_environment);
    int rc;
    if ((rc = check_map_sizes(&labels, "spec.template.labels", err, errlen)) != OK ||
        (rc = check_map_sizes(&annotations, "spec.template.annotations", err, errlen)) != OK ||
        (rc = check_map_sizes(&env, "spec.template.environment", err, errlen)) != OK ||
        (rc = check_struct_size(t->resources, "spec.template.resources", err, errlen)) != OK ||
        (rc = check_struct_size(t->driver_config, "spec.template.driver_config", err, errlen)) !=
            OK)
        return rc;
    return check_env(&env, "spec.template.environment", err, errlen);
}

static int check_command(const Openshell__V1__SandboxSpec *s, char *err, size_t errlen)
{
    if (s->n_command > COMMAND_ARGS_MAX)
        return api_invalid(err, errlen, "spec.command: %zu arguments exceed the limit of %d",
                           s->n_command, COMMAND_ARGS_MAX);
    if (str0(s->command[0])[0] == '\0')
        return api_invalid(err, errlen, "spec.command[0]: must not be empty");
    size_t total = 0;
    for (size_t i = 0; i < s->n_command; i++)
        total += strlen(str0(s->command[i]));
    if (total > COMMAND_TOTAL_MAX)
        return api_invalid(err, errlen, "spec.command: total size %zu bytes exceeds %d", total,
                           COMMAND_TOTAL_MAX);
    for (size_t i = 0; i < s->n_command; i++) {
        size_t n = strlen(str0(s->command[i]));
        if (n > COMMAND_ARG_MAX)
            return api_invalid(err, errlen, "spec.command[%zu]: %zu bytes exceed the limit of %d",
                               i, n, COMMAND_ARG_MAX);
    }
    return OK;
}

/* Size and format rules of the spec, in upstream's order. */
static int check_spec(const Openshell__V1__SandboxSpec *s, char *err, size_t errlen)
{
    int rc;
    if (s->n_providers > PROVIDERS_MAX)
        return api_invalid(err, errlen, "spec.providers: %zu entries exceed the limit of %d",
                           s->n_providers, PROVIDERS_MAX);
    size_t n = strlen(str0(s->log_level));
    if (n > LOG_LEVEL_MAX)
        return api_invalid(err, errlen, "spec.log_level: %zu bytes exceed the limit of %d", n,
                           LOG_LEVEL_MAX);
    struct kv_map env = KV_MAP(s->environment, s->n_environment);
    if ((rc = check_map_sizes(&env, "spec.environment", err, errlen)) != OK ||
        (rc = check_env(&env, "spec.environment", err, errlen)) != OK)
        return rc;
    if (s->template_ != NULL && (rc = check_template(s->template_, err, errlen)) != OK)
        return rc;
    const Openshell__V1__ResourceRequirements *rr = s->resource_requirements;
    if (rr != NULL && rr->gpu != NULL &&
        rr->gpu->_count_case == OPENSHELL__V1__GPU_RESOURCE_REQUIREMENTS___COUNT_COUNT &&
        rr->gpu->count == 0)
        return api_invalid(err, errlen,
                           "spec.resource_requirements.gpu.count: must be greater than 0");
    if ((rc = check_command(s, err, errlen)) != OK)
        return rc;
    if (s->policy != NULL) {
        n = protobuf_c_message_get_packed_size(&s->policy->base);
        if (n > POLICY_ENCODED_MAX)
            return api_invalid(err, errlen, "spec.policy: encoded size %zu exceeds %d bytes", n,
                               POLICY_ENCODED_MAX);
    }
    return OK;
}

/* Request labels and annotations (metadata), with the labels module's rules. */
static int check_metadata(const Openshell__V1__CreateSandboxRequest *req, char *err, size_t errlen)
{
    char why[384];
    struct kv_map labels = KV_MAP(req->labels, req->n_labels);
    struct kv_map ann = KV_MAP(req->annotations, req->n_annotations);
    if (labels.n > LABELS_MAP_MAX_ENTRIES)
        return api_invalid(err, errlen, "labels: %zu entries exceed the limit of %d", labels.n,
                           LABELS_MAP_MAX_ENTRIES);
    for (size_t i = 0; i < labels.n; i++)
        if (!labels_key_valid(kv_key(&labels, i), why, sizeof(why)) ||
            !labels_value_valid(kv_value(&labels, i), why, sizeof(why)))
            return api_invalid(err, errlen, "labels: %s", why);
    if (ann.n > LABELS_MAP_MAX_ENTRIES)
        return api_invalid(err, errlen, "annotations: %zu entries exceed the limit of %d", ann.n,
                           LABELS_MAP_MAX_ENTRIES);
    for (size_t i = 0; i < ann.n; i++) {
        size_t kl = strlen(kv_key(&ann, i));
        if (kl > MAP_KEY_MAX)
            return api_invalid(err, errlen, "annotations: key '%s' is %zu bytes, limit %d",
                               Q(kv_key(&ann, i)), kl, MAP_KEY_MAX);
        if (!labels_annotation_valid(kv_key(&ann, i), kv_value(&ann, i), why, sizeof(why)))
            return api_invalid(err, errlen, "annotations: %s", why);
    }
    return OK;
}

int api_spec_validate_with(const struct api_alloc *al, Openshell__V1__CreateSandboxRequest *req,
                           char *err, size_t errlen)
{
    Openshell__V1__SandboxSpec *spec = req->spec;
    char why[384];
    int rc;
    if (spec == NULL)
        return api_invalid(err, errlen, "spec is required");
    if (spec->n_command == 0) {
        spec->command = al->alloc(al->ctx, 2 * sizeof(*spec->command));
        spec->command[0] = sdup(al, "/bin/bash");
        spec->command[1] = sdup(al, "-l");
        spec->n_command = 2;
        spec->tty = true;
    }
    if (str0(req->name)[0] != '\0' &&
        !labels_dns_label_valid(req->name, NAME_MAX_LEN, why, sizeof(why)))
        return api_invalid(err, errlen, "%s", why);
    if ((rc = check_spec(spec, err, errlen)) != OK)
        return rc;
    if ((rc = check_metadata(req, err, errlen)) != OK)
        return rc;
    /* The spec is stored and forwarded in its encoding: it must decode
     * again (see msg_clone). */
    if (msg_clone(al, &spec->base) == NULL)
        return api_invalid(err, errlen, "spec: malformed encoding (a field numbered 0)");
    return OK;
}

int api_spec_validate(struct grpc_call *call, Openshell__V1__CreateSandboxRequest *req, char *err,
                      size_t errlen)
{
    const struct api_alloc al = {alloc_from_call, call};
    return api_spec_validate_with(&al, req, err, errlen);
}

/* ---- generated names ---------------------------------------------------------- */

/* Short, common, friendly words, written for this gateway. Lowercase a-z. */
static const char *const adjectives[] = {
    "able",    "agile",    "airy",     "alert",    "amber",     "ample",    "apt",      "ardent",
    "azure",   "balmy",    "blithe",   "bold",     "bouncy",    "brave",    "breezy",   "bright",
    "brisk",   "bubbly",   "calm",     "candid",   "caring",    "cheery",   "chief",    "chipper",
    "civil",   "classic",  "clean",    "clear",    "clever",    "cobalt",   "comfy",    "cool",
    "coral",   "cosmic",   "cozy",     "crafty",   "crimson",   "crisp",    "curious",  "cyan",
    "dainty",  "dandy",    "dapper",   "daring",   "dazzling",  "dear",     "deft",     "devoted",
    "direct",  "dreamy",   "dynamic",  "eager",    "early",     "earnest",  "easy",     "elated",
    "elegant", "epic",     "equal",    "exact",    "expert",    "fair",     "faithful", "famous",
    "fancy",   "fast",     "festive",  "fine",     "firm",      "fluent",   "fluffy",   "flying",
    "fond",    "frank",    "free",     "fresh",    "frisky",    "frosty",   "gallant",  "gentle",
    "genuine", "giant",    "gifted",   "giddy",    "glad",      "gleaming", "glossy",   "golden",
    "good",    "graceful", "grand",    "grateful", "great",     "green",    "happy",    "hardy",
    "hearty",  "helpful",  "heroic",   "hip",      "honest",    "hopeful",  "humble",   "icy",
    "ideal",   "indigo",   "inspired", "ivory",    "jade",      "jazzy",    "jolly",    "jovial",
    "joyful",  "jumbo",    "just",     "keen",     "kind",      "kindly",   "large",    "lavish",
    "lemon",   "lilac",    "limber",   "lively",   "lofty",     "loyal",    "lucid",    "lucky",
    "lunar",   "lush",     "magic",    "majestic", "major",     "mellow",   "merry",    "mighty",
    "mild",    "minty",    "modest",   "modern",   "moral",     "mossy",    "musical",  "natural",
    "neat",    "nifty",    "nimble",   "noble",    "novel",     "olive",    "open",     "optimal",
    "orange",  "organic",  "patient",  "peaceful", "pearly",    "peppy",    "perky",    "placid",
    "playful", "pleasant", "plucky",   "plum",     "polished",  "polite",   "precise",  "prime",
    "proper",  "proud",    "prudent",  "quick",    "quiet",     "quirky",   "radiant",  "rapid",
    "rare",    "ready",    "regal",    "relaxed",  "rich",      "robust",   "rosy",     "royal",
    "ruby",    "rustic",   "safe",     "sandy",    "savvy",     "scarlet",  "secure",   "serene",
    "sharp",   "shiny",    "silent",   "silky",    "silver",    "simple",   "sincere",  "skilled",
    "sleek",   "smart",    "smiling",  "smooth",   "snappy",    "snowy",    "snug",     "social",
    "solar",   "solid",    "sonic",    "sparkly",  "speedy",    "spicy",    "spry",     "stable",
    "steady",  "stellar",  "still",    "stout",    "strong",    "sturdy",   "stylish",  "sunny",
    "super",   "sure",     "sweet",    "swift",    "tactful",   "teal",     "tender",   "thankful",
    "thrifty", "tidy",     "timely",   "tiny",     "topaz",     "tough",    "tranquil", "true",
    "trusty",  "upbeat",   "urban",    "useful",   "valiant",   "velvet",   "vibrant",  "violet",
    "vital",   "vivid",    "warm",     "wavy",     "whimsical", "wise",     "witty",    "wonderful",
    "young",   "youthful", "zany",     "zealous",  "zesty",     "zippy",
};

static const char *const nouns[] = {
    "acorn",   "anchor",   "antelope", "apple",    "arrow",   "aspen",    "badger",  "bagel",
    "banjo",   "barrel",   "basil",    "beacon",   "beaver",  "bell",     "birch",   "bison",
    "bloom",   "breeze",   "bridge",   "brook",    "buffalo", "button",   "cactus",  "camel",
    "candle",  "canoe",    "canyon",   "cardinal", "castle",  "cedar",    "cello",   "cheetah",
    "cherry",  "cliff",    "cloud",    "clover",   "comet",   "compass",  "cookie",  "cougar",
    "cove",    "coyote",   "crane",    "crayon",   "creek",   "cricket",  "crystal", "cypress",
    "daisy",   "delta",    "dingo",    "dolphin",  "donkey",  "dove",     "dragon",  "drum",
    "dune",    "eagle",    "egret",    "elk",      "ember",   "engine",   "falcon",  "feather",
    "fern",    "ferret",   "field",    "finch",    "fjord",   "flamingo", "flute",   "forest",
    "fox",     "frog",     "frost",    "gadget",   "galaxy",  "garden",   "gazelle", "gecko",
    "geyser",  "gibbon",   "ginger",   "giraffe",  "glacier", "glade",    "goose",   "gopher",
    "grove",   "guitar",   "gull",     "hammer",   "harbor",  "hare",     "harp",    "hawk",
    "hazel",   "hedgehog", "helmet",   "heron",    "hill",    "hippo",    "honey",   "hornet",
    "horizon", "ibis",     "iguana",   "island",   "jackal",  "jaguar",   "jasmine", "jelly",
    "kestrel", "kettle",   "kite",     "kiwi",     "koala",   "lagoon",   "lake",    "lamp",
    "lantern", "lark",     "leaf",     "lemur",    "lens",    "leopard",  "lily",    "llama",
    "lobster", "lotus",    "lynx",     "magnet",   "magpie",  "mango",    "maple",   "marble",
    "marmot",  "meadow",   "meerkat",  "melon",    "mesa",    "meteor",   "mirror",  "mole",
    "moon",    "moose",    "moss",     "moth",     "muffin",  "narwhal",  "nebula",  "needle",
    "newt",    "nutmeg",   "oak",      "oasis",    "ocean",   "ocelot",   "okapi",   "olive",
    "orbit",   "orchid",   "osprey",   "otter",    "owl",     "oyster",   "paddle",  "panda",
    "panther", "parrot",   "peach",    "pebble",   "pelican", "pencil",   "penguin", "pepper",
    "piano",   "pigeon",   "pillow",   "pine",     "pixel",   "planet",   "plover",  "pocket",
    "pond",    "poppy",    "prairie",  "puffin",   "puma",    "puzzle",   "quail",   "quartz",
    "quill",   "rabbit",   "raccoon",  "radar",    "rain",    "raven",    "reef",    "ridge",
    "river",   "robin",    "rocket",   "rose",     "saddle",  "sail",     "salmon",  "scarf",
    "seal",    "shark",    "shell",    "signal",   "sky",     "sloth",    "snail",   "sparrow",
    "spoon",   "spruce",   "squid",    "star",     "stone",   "stork",    "storm",   "stream",
    "summit",  "sun",      "swan",     "tapir",    "teapot",  "thistle",  "thunder", "ticket",
    "tide",    "tiger",    "toucan",   "tower",    "trout",   "trumpet",  "tulip",   "tunnel",
    "turtle",  "valley",   "violin",   "wagon",    "walrus",  "weasel",   "whale",   "whistle",
    "willow",  "wind",     "window",   "wombat",   "wren",    "yak",      "yarn",    "zebra",
};

/* Uniform index below |n| from the system CSPRNG (rejection sampling, no
 * modulo bias). False when the random source fails. */
static bool random_index(size_t n, size_t *out)
{
    const uint64_t span = (uint64_t)UINT32_MAX + 1;
    const uint64_t limit = span - span % n;
    for (;;) {
        uint32_t r;
        if (gw_random_bytes(&r, sizeof(r)) != 0)
            return false;
        if (r < limit) {
            *out = r % n;
            return true;
        }
    }
}

/* Last resort when the CSPRNG fails: splitmix64 over the clock, the pid and
 * a counter. Names only need to be unlikely to clash, not secret. */
static uint64_t weak_random(void)
{
    static uint64_t counter;
    uint64_t z = gw_clock_mono_us() ^ ((uint64_t)getpid() << 32) ^ (++counter * 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
}

void api_spec_compose_name(char *out, size_t outlen, const char *adjective, const char *noun)
{
    if (outlen == 0)
        return;
    size_t max = GW_MIN((size_t)NAME_MAX_LEN, outlen - 1);
    size_t n = (size_t)snprintf(out, max + 1, "%s-%s", adjective, noun);
    n = GW_MIN(n, max);
    while (n > 0 && out[n - 1] == '-')
        n--;
    out[n] = '\0';
}

void api_spec_generate_name(char *out, size_t outlen)
{
    size_t a, b;
    if (outlen == 0)
        return;
    if (random_index(GW_ARRAY_LEN(adjectives), &a) && random_index(GW_ARRAY_LEN(nouns), &b)) {
        api_spec_compose_name(out, outlen, adjectives[a], nouns[b]);
        return;
    }
    /* Fallback of upstream: six random lowercase letters. */
    size_t n = GW_MIN((size_t)6, outlen - 1);
    for (size_t i = 0; i < n; i++) {
        size_t k;
        if (!random_index(26, &k))
            k = (size_t)(weak_random() % 26);
        out[i] = (char)('a' + k);
    }
    out[n] = '\0';
}

/* ---- google.protobuf.Struct building ---------------------------------------- */

static Google__Protobuf__Struct *struct_new(const struct api_alloc *al, size_t cap)
{
    Google__Protobuf__Struct *s = msg_new(al, &google__protobuf__struct__descriptor);
    s->fields = zalloc(al, (cap ? cap : 1) * sizeof(*s->fields));
    return s;
}

/* Appends |key| -> |v|; the caller sized |s| for it. */
static void struct_put(const struct api_alloc *al, Google__Protobuf__Struct *s, const char *key,
                       Google__Protobuf__Value *v)
{
    Google__Protobuf__Struct__FieldsEntry *e =
        msg_new(al, &google__protobuf__struct__fields_entry__descriptor);
    e->key = sdup(al, key);
    e->value = v;
    s->fields[s->n_fields++] = e;
}

static Google__Protobuf__Value *value_new(const struct api_alloc *al,
                                          Google__Protobuf__Value__KindCase kind)
{
    Google__Protobuf__Value *v = msg_new(al, &google__protobuf__value__descriptor);
    v->kind_case = kind;
    return v;
}

static Google__Protobuf__Value *value_string(const struct api_alloc *al, const char *s)
{
    Google__Protobuf__Value *v = value_new(al, GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE);
    v->string_value = sdup(al, s);
    return v;
}

static Google__Protobuf__Value *value_bool(const struct api_alloc *al, bool b)
{
    Google__Protobuf__Value *v = value_new(al, GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE);
    v->bool_value = b;
    return v;
}

static Google__Protobuf__Value *value_struct(const struct api_alloc *al,
                                             Google__Protobuf__Struct *s)
{
    Google__Protobuf__Value *v = value_new(al, GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE);
    v->struct_value = s;
    return v;
}

/* ---- public -> driver ----------------------------------------------------------- */

enum { RES_CPU_REQUEST, RES_CPU_LIMIT, RES_MEMORY_REQUEST, RES_MEMORY_LIMIT, RES_N };

/* One "requests" or "limits" object: cpu/memory strings into |q| (offset
 * |kind|: 0 requests, 1 limits), every other entry into |rest|. */
static int map_resource_block(const struct api_alloc *al, const char *block,
                              const Google__Protobuf__Struct *s, int kind, const char **q,
                              Google__Protobuf__Struct *rest, char *err, size_t errlen)
{
    for (size_t i = 0; i < s->n_fields; i++) {
        const char *key = str0(s->fields[i]->key);
        const Google__Protobuf__Value *v = s->fields[i]->value;
        int slot = strcmp(key, "cpu") == 0      ? RES_CPU_REQUEST
                   : strcmp(key, "memory") == 0 ? RES_MEMORY_REQUEST
                                                : -1;
        if (slot < 0) {
            if (v != NULL) {
                Google__Protobuf__Value *copy = msg_clone(al, &v->base);
                if (copy == NULL)
                    return api_invalid(err, errlen,
                                       "spec.template.resources.%s.%s: malformed value", block,
                                       Q(key));
                struct_put(al, rest, key, copy);
            }
            continue;
        }
        if (v == NULL || v->kind_case != GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE)
            return api_invalid(err, errlen, "spec.template.resources.%s.%s must be a string", block,
                               key);
        q[slot + kind] = v->string_value;
    }
    return OK;
}

/* template.resources: requests/limits cpu/memory strings become typed
 * resources (NULL when all four are empty); every other entry, nested
 * ones included, is kept for platform_config.resources_raw (NULL when
 * nothing is left). */
static int map_resources(const struct api_alloc *al, const Google__Protobuf__Struct *res,
                         Openshell__Compute__V1__DriverResourceRequirements **typed,
                         Google__Protobuf__Struct **raw, char *err, size_t errlen)
{
    const char *q[RES_N] = {0};
    *typed = NULL;
    *raw = NULL;
    if (res == NULL)
        return OK;
    Google__Protobuf__Struct *rest = struct_new(al, res->n_fields);
    for (size_t i = 0; i < res->n_fields; i++) {
        const char *key = str0(res->fields[i]->key);
        const Google__Protobuf__Value *v = res->fields[i]->value;
        int kind = strcmp(key, "requests") == 0 ? 0 : strcmp(key, "limits") == 0 ? 1 : -1;
        if (kind < 0) {
            if (v != NULL) {
                Google__Protobuf__Value *copy = msg_clone(al, &v->base);
                if (copy == NULL)
                    return api_invalid(err, errlen, "spec.template.resources.%s: malformed value",
                                       Q(key));
                struct_put(al, rest, key, copy);
            }
            continue;
        }
        if (v == NULL || v->kind_case != GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)
            return api_invalid(err, errlen, "spec.template.resources.%s must be an object", key);
        if (v->struct_value == NULL)
            continue;
        Google__Protobuf__Struct *inner = struct_new(al, v->struct_value->n_fields);
        int rc = map_resource_block(al, key, v->struct_value, kind, q, inner, err, errlen);
        if (rc != OK)
            return rc;
        if (inner->n_fields > 0)
            struct_put(al, rest, key, value_struct(al, inner));
    }
    bool any = false;
    for (int i = 0; i < RES_N; i++)
        any = any || str0(q[i])[0] != '\0';
    if (any) {
        Openshell__Compute__V1__DriverResourceRequirements *t =
            msg_new(al, &openshell__compute__v1__driver_resource_requirements__descriptor);
        t->cpu_request = sdup(al, q[RES_CPU_REQUEST]);
        t->cpu_limit = sdup(al, q[RES_CPU_LIMIT]);
        t->memory_request = sdup(al, q[RES_MEMORY_REQUEST]);
        t->memory_limit = sdup(al, q[RES_MEMORY_LIMIT]);
        *typed = t;
    }
    if (rest->n_fields > 0)
        *raw = rest;
    return OK;
}

/* The gateway-built platform_config (compute-v1.md): NULL when no key
 * applies. Takes |raw| (resources_raw) as built by map_resources(). */
static Google__Protobuf__Struct *platform_config(const struct api_alloc *al,
                                                 const Openshell__V1__SandboxTemplate *t,
                                                 Google__Protobuf__Struct *raw)
{
    Google__Protobuf__Struct *pc = struct_new(al, 4);
    if (t != NULL && str0(t->runtime_class_name)[0] != '\0')
        struct_put(al, pc, "runtime_class_name", value_string(al, t->runtime_class_name));
    if (t != NULL && t->n_annotations > 0) {
        struct kv_map m = KV_MAP(t->annotations, t->n_annotations);
        Google__Protobuf__Struct *ann = struct_new(al, m.n);
        for (size_t i = 0; i < m.n; i++)
            struct_put(al, ann, kv_key(&m, i), value_string(al, kv_value(&m, i)));
        struct_put(al, pc, "annotations", value_struct(al, ann));
    }
    if (t != NULL && t->_user_namespaces_case ==
                         OPENSHELL__V1__SANDBOX_TEMPLATE___USER_NAMESPACES_USER_NAMESPACES)
        struct_put(al, pc, "host_users", value_bool(al, !t->user_namespaces));
    if (raw != NULL)
        struct_put(al, pc, "resources_raw", value_struct(al, raw));
    return pc->n_fields > 0 ? pc : NULL;
}

/* semantics.md §4: the envelope block keyed exactly by |driver_name| (the
 * last one if the key repeats, as for any protobuf map); only its inner
 * object is forwarded. Other blocks are never looked at. */
static int select_driver_config(const struct api_alloc *al, const Google__Protobuf__Struct *env,
                                const char *driver_name, Google__Protobuf__Struct **out, char *err,
                                size_t errlen)
{
    const Google__Protobuf__Struct__FieldsEntry *hit = NULL;
    *out = NULL;
    if (env == NULL || driver_name == NULL || driver_name[0] == '\0')
        return OK;
    for (size_t i = 0; i < env->n_fields; i++)
        if (strcmp(str0(env->fields[i]->key), driver_name) == 0)
            hit = env->fields[i];
    if (hit == NULL)
        return OK;
    const Google__Protobuf__Value *v = hit->value;
    if (v == NULL || v->kind_case != GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)
        return api_invalid(err, errlen, "template.driver_config.%s must be an object",
                           Q(driver_name));
    *out = v->struct_value != NULL ? msg_clone(al, &v->struct_value->base) : struct_new(al, 0);
    if (*out == NULL)
        return api_invalid(err, errlen, "template.driver_config.%s: malformed encoding",
                           Q(driver_name));
    return OK;
}

static int build_template(const struct api_alloc *al, const Openshell__V1__SandboxTemplate *t,
                          const char *id, const char *driver_name, const char *default_image,
                          Openshell__Compute__V1__DriverSandboxTemplate **out, char *err,
                          size_t errlen)
{
    Openshell__Compute__V1__DriverSandboxTemplate *dt =
        msg_new(al, &openshell__compute__v1__driver_sandbox_template__descriptor);
    Google__Protobuf__Struct *raw = NULL;
    int rc;
    const char *image = t != NULL ? str0(t->image) : "";
    dt->image = sdup(al, image[0] != '\0' ? image : default_image);
    dt->agent_socket_path = sdup(al, t != NULL ? t->agent_socket : "");

    struct kv_map labels = t != NULL ? KV_MAP(t->labels, t->n_labels) : (struct kv_map){0};
    struct kv_out lo = KV_OUT(
        al, Openshell__Compute__V1__DriverSandboxTemplate__LabelsEntry,
        &openshell__compute__v1__driver_sandbox_template__labels_entry__descriptor, labels.n + 1);
    for (size_t i = 0; i < labels.n; i++)
        if (strcmp(kv_key(&labels, i), API_OWNER_LABEL) != 0) /* ours wins */
            kv_put(al, &lo, kv_key(&labels, i), kv_value(&labels, i));
    kv_put(al, &lo, API_OWNER_LABEL, id);
    dt->labels = (Openshell__Compute__V1__DriverSandboxTemplate__LabelsEntry **)lo.e;
    dt->n_labels = lo.n;

    if (t != NULL && t->n_environment > 0) {
        struct kv_map env = KV_MAP(t->environment, t->n_environment);
        struct kv_out eo = KV_OUT(
            al, Openshell__Compute__V1__DriverSandboxTemplate__EnvironmentEntry,
            &openshell__compute__v1__driver_sandbox_template__environment_entry__descriptor, env.n);
        kv_copy(al, &eo, &env);
        dt->environment = (Openshell__Compute__V1__DriverSandboxTemplate__EnvironmentEntry **)eo.e;
        dt->n_environment = eo.n;
    }

    if ((rc = map_resources(al, t != NULL ? t->resources : NULL, &dt->resources, &raw, err,
                            errlen)) != OK ||
        (rc = select_driver_config(al, t != NULL ? t->driver_config : NULL, driver_name,
                                   &dt->driver_config, err, errlen)) != OK)
        return rc;
    dt->platform_config = platform_config(al, t, raw);
    *out = dt;
    return OK;
}

static Openshell__Compute__V1__ResourceRequirements *
map_gpu(const struct api_alloc *al, const Openshell__V1__ResourceRequirements *rr)
{
    Openshell__Compute__V1__ResourceRequirements *d =
        msg_new(al, &openshell__compute__v1__resource_requirements__descriptor);
    if (rr->gpu != NULL) {
        d->gpu = msg_new(al, &openshell__compute__v1__gpu_resource_requirements__descriptor);
        if (rr->gpu->_count_case == OPENSHELL__V1__GPU_RESOURCE_REQUIREMENTS___COUNT_COUNT) {
            d->gpu->_count_case = OPENSHELL__COMPUTE__V1__GPU_RESOURCE_REQUIREMENTS___COUNT_COUNT;
            d->gpu->count = rr->gpu->count;
        }
    }
    return d;
}

static void map_spec_fields(const struct api_alloc *al, const Openshell__V1__SandboxSpec *spec,
                            Openshell__Compute__V1__DriverSandboxSpec *ds)
{
    ds->log_level = sdup(al, spec->log_level);
    if (spec->n_environment > 0) {
        struct kv_map env = KV_MAP(spec->environment, spec->n_environment);
        struct kv_out eo = KV_OUT(
            al, Openshell__Compute__V1__DriverSandboxSpec__EnvironmentEntry,
            &openshell__compute__v1__driver_sandbox_spec__environment_entry__descriptor, env.n);
        kv_copy(al, &eo, &env);
        ds->environment = (Openshell__Compute__V1__DriverSandboxSpec__EnvironmentEntry **)eo.e;
        ds->n_environment = eo.n;
    }
    if (spec->n_command > 0) {
        ds->command = al->alloc(al->ctx, spec->n_command * sizeof(*ds->command));
        for (size_t i = 0; i < spec->n_command; i++)
            ds->command[i] = sdup(al, spec->command[i]);
        ds->n_command = spec->n_command;
    }
    ds->tty = spec->tty;
    if (spec->resource_requirements != NULL)
        ds->resource_requirements = map_gpu(al, spec->resource_requirements);
}

int api_spec_to_driver_with(const struct api_alloc *al, const char *id, const char *name,
                            const char *workspace, const Openshell__V1__SandboxSpec *spec,
                            const char *driver_name, const char *default_image,
                            Openshell__Compute__V1__DriverSandbox **out, char *err, size_t errlen)
{
    *out = NULL;
    Openshell__Compute__V1__DriverSandbox *sb =
        msg_new(al, &openshell__compute__v1__driver_sandbox__descriptor);
    sb->id = sdup(al, id);
    sb->name = sdup(al, name);
    sb->workspace = sdup(al, workspace);
    sb->spec = msg_new(al, &openshell__compute__v1__driver_sandbox_spec__descriptor);
    if (spec != NULL)
        map_spec_fields(al, spec, sb->spec);
    int rc = build_template(al, spec != NULL ? spec->template_ : NULL, str0(id), driver_name,
                            default_image, &sb->spec->template_, err, errlen);
    if (rc != OK)
        return rc;
    *out = sb;
    return OK;
}

int api_spec_to_driver(struct grpc_call *call, const char *id, const char *name,
                       const char *workspace, const Openshell__V1__SandboxSpec *spec,
                       const char *driver_name, const char *default_image,
                       Openshell__Compute__V1__DriverSandbox **out, char *err, size_t errlen)
{
    const struct api_alloc al = {alloc_from_call, call};
    return api_spec_to_driver_with(&al, id, name, workspace, spec, driver_name, default_image, out,
                                   err, errlen);
}
