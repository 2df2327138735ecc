#include "reactor/reactor.h"
#include "reactor/reactor_int.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* The service manager's variables once reactor_sd_env_take() moved them
 * out of the environment; before that, getenv() answers. */
static struct {
    bool taken;
    char *notify_socket; /* NULL: was unset */
    char *watchdog_usec;
    char *watchdog_pid;
} sd_env;

static const char *sd_getenv(const char *name)
{
    if (!sd_env.taken)
        return getenv(name);
    if (strcmp(name, "NOTIFY_SOCKET") == 0)
        return sd_env.notify_socket;
    if (strcmp(name, "WATCHDOG_USEC") == 0)
        return sd_env.watchdog_usec;
    return sd_env.watchdog_pid;
}

static char *take_var(const char *name)
{
    const char *v = getenv(name);
    char *copy = v != NULL ? gw_xstrdup(v) : NULL;

    unsetenv(name);
    return copy;
}

void reactor_sd_env_take(void)
{
    if (sd_env.taken)
        return;
    sd_env.notify_socket = take_var("NOTIFY_SOCKET");
    sd_env.watchdog_usec = take_var("WATCHDOG_USEC");
    sd_env.watchdog_pid = take_var("WATCHDOG_PID");
    sd_env.taken = true;
}

/* $NOTIFY_SOCKET is a path or, with a leading '@', an abstract name. */
static int notify_addr(const char *name, struct sockaddr_un *sa, socklen_t *len)
{
    size_t n = strlen(name);

    if ((name[0] != '/' && name[0] != '@') || n >= sizeof(sa->sun_path))
        return REACTOR_ERR_ADDR;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, name, n);
    if (name[0] == '@') {
        /* Abstract names are exactly as long as the address says; no NUL. */
        sa->sun_path[0] = '\0';
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    return 0;
}

int reactor_sd_notify(struct reactor *r, const char *state)
{
    const char *name = sd_getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    socklen_t salen;
    int fd = -1;
    int rc = 0;

    if (name == NULL || name[0] == '\0')
        return 0;
    if (notify_addr(name, &sa, &salen) != 0) {
        log_warn("reactor.sd_notify_failed", LF_STR("socket", name),
                 LF_STR("reason", "unsupported address"));
        return REACTOR_ERR_ADDR;
    }
    /* Non-blocking: with the manager's queue full, losing one notification
     * is better than stalling the loop. */
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 ||
        sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0) {
        log_warn("reactor.sd_notify_failed", LF_STR("socket", name), LF_STR("state", state),
                 LF_STR("reason", strerror(errno)));
        rc = REACTOR_ERR_SYS;
        goto out;
    }
    log_debug("reactor.sd_notify", LF_STR("state", state));
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Parses a whole decimal number; false on anything else. */
static bool parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = (uint64_t)v;
    return true;
}

uint64_t reactor_sd_watchdog_usec(void)
{
    const char *pid_text = sd_getenv("WATCHDOG_PID");
    uint64_t usec = 0;
    uint64_t pid = 0;

    if (!parse_u64(sd_getenv("WATCHDOG_USEC"), &usec))
        return 0;
    /* The variables are inherited: WATCHDOG_PID says whom they were for. */
    if (pid_text != NULL && pid_text[0] != '\0' &&
        (!parse_u64(pid_text, &pid) || pid != (uint64_t)getpid()))
        return 0;
    return usec;
}
