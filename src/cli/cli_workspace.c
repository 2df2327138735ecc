/*
 * cli_workspace: workspace create/list/delete and member add/remove/list.
 */
#include "cli/cli.h"

#include <getopt.h>
#include <string.h>

#include "datamodel.pb-c.h"
#include "openshell.pb-c.h"

#define SVC "/openshell.v1.OpenShell/"

static bool want_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

static const char *str0(const char *s)
{
    return s != NULL ? s : "";
}

/* Checks that argv holds exactly |n| positional words named in |names| and
 * no options. Returns 0 or 2. */
static int positional(const char *cmd, int argc, char **argv, int n, const char *const *names)
{
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_usage(cmd, "unknown option '%s'", argv[i]);
    }
    if (argc - 1 < n)
        return cli_usage(cmd, "missing %s", names[argc - 1]);
    if (argc - 1 > n)
        return cli_usage(cmd, "unexpected argument '%s'", argv[n + 1]);
    return 0;
}

/* The start of the commands without options: --help prints |help| (returns
 * -1: exit 0); otherwise checks the |n| positional words. Returns 0, -1 or 2. */
static int simple_args(const char *cmd, const char *help, int argc, char **argv, int n,
                       const char *const *names)
{
    if (want_help(argc, argv)) {
        fputs(help, stdout);
        return -1;
    }
    return positional(cmd, argc, argv, n, names);
}

/* Calls |method| and, with -o json, prints the response. Returns the response
 * for the caller to print as text (free with protobuf_c_message_free_unpacked),
 * or NULL with *rc set: 0 when the JSON was printed, else the exit code. */
static ProtobufCMessage *call(struct cli *c, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *resp_desc, const char *what,
                              int *rc)
{
    ProtobufCMessage *resp = NULL;

    *rc = cli_unary(c, method, req, resp_desc, &resp, what);
    if (*rc != 0)
        return NULL;
    if (!cli_opts(c)->json)
        return resp;
    cli_print_json(resp);
    protobuf_c_message_free_unpacked(resp, NULL);
    return NULL;
}

static const char *role_name(int role)
{
    switch (role) {
    case OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_USER:
        return "user";
    case OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_ADMIN:
        return "admin";
    default:
        return "-";
    }
}

static const char *workspace_phase(const Openshell__Datamodel__V1__Workspace *w)
{
    static const char prefix[] = "WORKSPACE_PHASE_";
    const ProtobufCEnumValue *v;

    if (w->status == NULL)
        return "-";
    v = protobuf_c_enum_descriptor_get_value(&openshell__datamodel__v1__workspace_phase__descriptor,
                                             (int)w->status->phase);
    if (v == NULL)
        return "UNKNOWN";
    return strncmp(v->name, prefix, sizeof(prefix) - 1) == 0 ? v->name + sizeof(prefix) - 1
                                                             : v->name;
}

/* ---- workspace create / list / delete -------------------------------------------- */

static const char create_help[] = "Usage: openshell workspace create NAME\n"
                                  "\n"
                                  "Creates a workspace (platform admins only).\n";

int cli_cmd_workspace_create(struct cli *c, int argc, char **argv)
{
    static const char *const names[] = {"the workspace NAME"};
    Openshell__V1__CreateWorkspaceRequest req = OPENSHELL__V1__CREATE_WORKSPACE_REQUEST__INIT;
    ProtobufCMessage *resp;
    char what[300];
    int rc = simple_args("workspace create", create_help, argc, argv, 1, names);

    if (rc != 0)
        return rc < 0 ? 0 : rc;
    req.name = argv[1];
    snprintf(what, sizeof(what), "create workspace \"%s\"", argv[1]);
    resp = call(c, SVC "CreateWorkspace", &req.base,
                &openshell__v1__create_workspace_response__descriptor, what, &rc);
    if (resp != NULL) {
        printf("created workspace %s\n", argv[1]);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return rc;
}

static const char list_help[] = "Usage: openshell workspace list\n"
                                "\n"
                                "Lists the workspaces you can see as NAME PHASE CREATED.\n";

int cli_cmd_workspace_list(struct cli *c, int argc, char **argv)
{
    static const char *const hdr[] = {"NAME", "PHASE", "CREATED"};
    Openshell__V1__ListWorkspacesRequest req = OPENSHELL__V1__LIST_WORKSPACES_REQUEST__INIT;
    Openshell__V1__ListWorkspacesResponse *resp;
    struct cli_table *t;
    int rc = simple_args("workspace list", list_help, argc, argv, 0, NULL);

    if (rc != 0)
        return rc < 0 ? 0 : rc;
    resp = (Openshell__V1__ListWorkspacesResponse *)call(
        c, SVC "ListWorkspaces", &req.base, &openshell__v1__list_workspaces_response__descriptor,
        "list workspaces", &rc);
    if (resp == NULL)
        return rc;
    t = cli_table_new(3, hdr);
    for (size_t i = 0; i < resp->n_workspaces; i++) {
        const Openshell__Datamodel__V1__Workspace *w = resp->workspaces[i];
        char ts[32];
        const char *row[3];
        cli_time_format(w->metadata != NULL ? w->metadata->created_at_ms : 0, ts);
        row[0] = w->metadata != NULL ? str0(w->metadata->name) : "";
        row[1] = workspace_phase(w);
        row[2] = ts;
        cli_table_add(t, row);
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

static const char delete_help[] = "Usage: openshell workspace delete NAME\n"
                                  "\n"
                                  "Deletes a workspace (it must hold no sandboxes).\n";

int cli_cmd_workspace_delete(struct cli *c, int argc, char **argv)
{
    static const char *const names[] = {"the workspace NAME"};
    Openshell__V1__DeleteWorkspaceRequest req = OPENSHELL__V1__DELETE_WORKSPACE_REQUEST__INIT;
    ProtobufCMessage *resp;
    char what[300];
    int rc = simple_args("workspace delete", delete_help, argc, argv, 1, names);

    if (rc != 0)
        return rc < 0 ? 0 : rc;
    req.name = argv[1];
    snprintf(what, sizeof(what), "workspace \"%s\"", argv[1]);
    resp = call(c, SVC "DeleteWorkspace", &req.base,
                &openshell__v1__delete_workspace_response__descriptor, what, &rc);
    if (resp != NULL) {
        printf("deleted workspace %s\n", argv[1]);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return rc;
}

/* ---- members ---------------------------------------------------------------------- */

static const char member_add_help[] =
    "Usage: openshell workspace member add WORKSPACE SUBJECT [--role user|admin]\n"
    "\n"
    "Adds (or changes the role of) a member: SUBJECT is the principal's subject (an\n"
    "OIDC 'sub' or an mTLS certificate CN). The default role is user.\n";

int cli_cmd_workspace_member_add(struct cli *c, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"role", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "workspace member add";
    Openshell__V1__AddWorkspaceMemberRequest req =
        OPENSHELL__V1__ADD_WORKSPACE_MEMBER_REQUEST__INIT;
    Openshell__V1__AddWorkspaceMemberResponse *resp = NULL;
    char what[600];
    int ch, rc;

    if (want_help(argc, argv)) {
        fputs(member_add_help, stdout);
        return 0;
    }
    req.role = OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_USER;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch != 'r')
            return cli_bad_option(cmd, ch, argv);
        if (strcmp(optarg, "user") == 0)
            req.role = OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_USER;
        else if (strcmp(optarg, "admin") == 0)
            req.role = OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_ADMIN;
        else
            return cli_usage(cmd, "--role must be 'user' or 'admin', not '%s'", optarg);
    }
    if (argc - optind < 2)
        return cli_usage(cmd, "missing %s", argc - optind == 0 ? "the WORKSPACE" : "the SUBJECT");
    if (argc - optind > 2)
        return cli_usage(cmd, "unexpected argument '%s'", argv[optind + 2]);
    req.workspace = argv[optind];
    req.principal_subject = argv[optind + 1];
    snprintf(what, sizeof(what), "add member \"%s\" to workspace \"%s\"", req.principal_subject,
             req.workspace);
    resp = (Openshell__V1__AddWorkspaceMemberResponse *)call(
        c, SVC "AddWorkspaceMember", &req.base,
        &openshell__v1__add_workspace_member_response__descriptor, what, &rc);
    if (resp == NULL)
        return rc;
    printf("added %s to workspace %s as %s\n", req.principal_subject, req.workspace,
           role_name(resp->member != NULL ? (int)resp->member->role : (int)req.role));
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

static const char member_remove_help[] = "Usage: openshell workspace member remove WORKSPACE "
                                         "SUBJECT\n"
                                         "\n"
                                         "Removes a member from a workspace.\n";

int cli_cmd_workspace_member_remove(struct cli *c, int argc, char **argv)
{
    static const char *const names[] = {"the WORKSPACE", "the SUBJECT"};
    Openshell__V1__RemoveWorkspaceMemberRequest req =
        OPENSHELL__V1__REMOVE_WORKSPACE_MEMBER_REQUEST__INIT;
    Openshell__V1__RemoveWorkspaceMemberResponse *resp;
    char what[600];
    int rc = simple_args("workspace member remove", member_remove_help, argc, argv, 2, names);

    if (rc != 0)
        return rc < 0 ? 0 : rc;
    req.workspace = argv[1];
    req.principal_subject = argv[2];
    snprintf(what, sizeof(what), "remove member \"%s\" from workspace \"%s\"", argv[2], argv[1]);
    resp = (Openshell__V1__RemoveWorkspaceMemberResponse *)call(
        c, SVC "RemoveWorkspaceMember", &req.base,
        &openshell__v1__remove_workspace_member_response__descriptor, what, &rc);
    if (resp == NULL)
        return rc;
    if (resp->removed)
        printf("removed %s from workspace %s\n", argv[2], argv[1]);
    else
        printf("%s was not a member of workspace %s\n", argv[2], argv[1]);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

static const char member_list_help[] = "Usage: openshell workspace member list WORKSPACE\n"
                                       "\n"
                                       "Lists a workspace's members as SUBJECT ROLE ADDED.\n";

int cli_cmd_workspace_member_list(struct cli *c, int argc, char **argv)
{
    static const char *const names[] = {"the WORKSPACE"};
    static const char *const hdr[] = {"SUBJECT", "ROLE", "ADDED"};
    Openshell__V1__ListWorkspaceMembersRequest req =
        OPENSHELL__V1__LIST_WORKSPACE_MEMBERS_REQUEST__INIT;
    Openshell__V1__ListWorkspaceMembersResponse *resp;
    struct cli_table *t;
    char what[300];
    int rc = simple_args("workspace member list", member_list_help, argc, argv, 1, names);

    if (rc != 0)
        return rc < 0 ? 0 : rc;
    req.workspace = argv[1];
    snprintf(what, sizeof(what), "list members of workspace \"%s\"", argv[1]);
    resp = (Openshell__V1__ListWorkspaceMembersResponse *)call(
        c, SVC "ListWorkspaceMembers", &req.base,
        &openshell__v1__list_workspace_members_response__descriptor, what, &rc);
    if (resp == NULL)
        return rc;
    t = cli_table_new(3, hdr);
    for (size_t i = 0; i < resp->n_members; i++) {
        const Openshell__V1__WorkspaceMember *m = resp->members[i];
        char ts[32];
        const char *row[3];
        cli_time_format(m->metadata != NULL ? m->metadata->created_at_ms : 0, ts);
        row[0] = str0(m->principal_subject);
        row[1] = role_name((int)m->role);
        row[2] = ts;
        cli_table_add(t, row);
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}
