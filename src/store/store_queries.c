/* The typed statements: every SQL text the gateway sends lives here. */
#include "store/store.h"

#define WS_COLS                                                                                    \
    "id::text, name, labels::text, phase, gw_ms(created_at), gw_ms(terminating_at), "              \
    "resource_version"

const struct store_stmt store_ws_create = {
    "ws_create", "SELECT " WS_COLS " FROM gw_workspace_create($1::uuid, $2, $3::jsonb, $4)", 4,
    true};
const struct store_stmt store_ws_get = {
    "ws_get", "SELECT " WS_COLS " FROM workspaces WHERE name = $1", 1, false};
const struct store_stmt store_ws_list = {
    "ws_list",
    "SELECT " WS_COLS " FROM workspaces w WHERE labels @> $1::jsonb AND ($4 = '' OR EXISTS "
    "(SELECT 1 FROM workspace_members m WHERE m.workspace_id = w.id AND m.principal_subject = "
    "$4)) ORDER BY created_at, name LIMIT $2::bigint OFFSET $3::bigint",
    4, false};
const struct store_stmt store_ws_delete_prepare = {
    "ws_delete_prepare", "SELECT gw_workspace_delete_prepare($1, $2)", 2, true};
const struct store_stmt store_ws_delete = {"ws_delete", "SELECT gw_workspace_delete($1, $2)", 2,
                                           true};

#define MEM_COLS "id::text, workspace, principal_subject, role, resource_version, gw_ms(created_at)"

const struct store_stmt store_member_add = {
    "member_add", "SELECT " MEM_COLS " FROM gw_member_add($1::uuid, $2, $3, $4, $5)", 5, true};
const struct store_stmt store_member_remove = {"member_remove",
                                               "SELECT gw_member_remove($1, $2, $3)", 3, true};
const struct store_stmt store_member_list = {
    "member_list",
    "SELECT m.id::text, w.name, m.principal_subject, m.role, m.resource_version, "
    "gw_ms(m.created_at) FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id "
    "WHERE w.name = $1 ORDER BY m.created_at, m.principal_subject LIMIT $2::bigint OFFSET "
    "$3::bigint",
    3, false};
const struct store_stmt store_member_role = {
    "member_role",
    "SELECT m.role FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id WHERE "
    "w.name = $1 AND m.principal_subject = $2",
    2, false};

#define SB_COLS                                                                                    \
    "s.id::text, w.name, s.name, s.owner, s.created_by, s.labels::text, s.annotations::text, "     \
    "s.spec, s.status, s.driver, s.phase, gw_ms(s.created_at), gw_ms(s.updated_at), "              \
    "s.resource_version"

const struct store_stmt store_sb_get_by_name = {
    "sb_get_by_name",
    "SELECT " SB_COLS " FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id "
    "WHERE w.name = $1 AND s.name = $2 AND s.deleted_at IS NULL",
    2, false};
const struct store_stmt store_sb_get_by_id = {
    "sb_get_by_id",
    "SELECT " SB_COLS " FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id "
    "WHERE s.id = $1::uuid AND s.deleted_at IS NULL",
    1, false};
const struct store_stmt store_sb_list = {
    "sb_list",
    "SELECT " SB_COLS " FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id "
    "WHERE ($1 = '' OR w.name = $1) AND s.deleted_at IS NULL AND s.labels @> $2::jsonb "
    "ORDER BY s.created_at, s.name, w.name, s.id LIMIT $3::bigint OFFSET $4::bigint",
    4, false};
const struct store_stmt store_sb_create = {
    "sb_create",
    "SELECT " SB_COLS " FROM gw_sandbox_create($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, "
    "$8::bytea, $9::jsonb, $10, $11, $12::bytea) s JOIN workspaces w ON w.id = s.workspace_id",
    12, true};
const struct store_stmt store_sb_update = {
    "sb_update",
    "SELECT " SB_COLS " FROM gw_sandbox_update($1::uuid, $2::bigint, $3, $4::bytea, $5::jsonb, "
    "$6, $7, $8, $9::jsonb) s JOIN workspaces w ON w.id = s.workspace_id",
    9, true};
const struct store_stmt store_sb_list_driver = {
    "sb_list_driver",
    "SELECT " SB_COLS " FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id "
    "WHERE s.driver = $1 AND s.deleted_at IS NULL ORDER BY s.created_at, s.id",
    1, false};
const struct store_stmt store_sb_platform_event = {
    "sb_platform_event", "SELECT gw_sandbox_platform_event($1::uuid, $2, $3, $4::jsonb)", 4, true};
const struct store_stmt store_sb_delete = {"sb_delete",
                                           "SELECT gw_sandbox_delete($1::uuid, $2, $3)", 3, true};

#define EV_COLS                                                                                    \
    "seq, coalesce(sandbox_id::text, ''), sandbox_name, workspace, kind, prev_phase, new_phase, "  \
    "actor, reason, labels::text, payload::text, gw_ms(created_at)"

const struct store_stmt store_ev_fetch = {
    "ev_fetch",
    "SELECT " EV_COLS " FROM sandbox_events WHERE seq > $1::bigint ORDER BY seq "
    "LIMIT $2::bigint",
    2, false};
const struct store_stmt store_ev_fetch_ws = {
    "ev_fetch_ws",
    "SELECT " EV_COLS " FROM sandbox_events WHERE seq > $1::bigint AND workspace = $3 "
    "ORDER BY seq LIMIT $2::bigint",
    3, false};
const struct store_stmt store_ev_platform_tail = {
    "ev_platform_tail",
    "SELECT * FROM (SELECT " EV_COLS " FROM sandbox_events WHERE sandbox_id = $1::uuid AND "
    "kind = 'sandbox.platform_event' AND seq IS NOT NULL AND seq <= $3::bigint "
    "ORDER BY seq DESC LIMIT $2::bigint) t ORDER BY seq",
    3, false};
const struct store_stmt store_ev_sequence = {"ev_sequence", "SELECT gw_sequence_events()", 0,
                                             false};
const struct store_stmt store_ev_last = {
    "ev_last", "SELECT last_seq FROM event_sequence WHERE singleton", 0, false};

const struct store_stmt store_ssh_session_create = {
    "ssh_session_create",
    "SELECT workspace, created_at_ms, expires_at_ms FROM gw_ssh_session_create($1, $2::uuid, $3, "
    "$4::bigint)",
    4, false};
const struct store_stmt store_ssh_session_get = {
    "ssh_session_get",
    "SELECT x.sandbox_id::text, w.name, x.revoked_at IS NOT NULL, gw_ms(x.expires_at) "
    "FROM ssh_sessions x JOIN workspaces w ON w.id = x.workspace_id WHERE x.token_sha256 = $1",
    1, false};
const struct store_stmt store_ssh_session_revoke = {
    "ssh_session_revoke", "SELECT gw_ssh_session_revoke($1, $2::uuid, $3)", 3, false};
