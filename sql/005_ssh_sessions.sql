-- 005: SSH sessions (semantics.md §13).
--
-- CreateSshSession hands out a token once; ForwardTcp accepts it for the
-- sandbox it was made for until it is revoked, expires, or the sandbox is
-- stopped or removed. The table keeps only the token's SHA-256 (lowercase
-- hex), so reading it does not yield usable tokens; the gateway hashes
-- the token a client presents and looks the hash up.
--
-- Stopping or removing a sandbox deletes its sessions in the same
-- transaction as the phase change (trigger below), so no session outlives
-- the state that allowed it.
CREATE TABLE ssh_sessions (
    token_sha256 text PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    sandbox_id   uuid NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_by   text NOT NULL,            -- principal subject that created it
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,              -- NULL = never expires
    revoked_at   timestamptz,              -- NULL = not revoked
    revoked_by   text
);
CREATE INDEX ssh_sessions_sandbox ON ssh_sessions (sandbox_id);

-- Creates a session for a READY sandbox. The sandbox row is locked FOR SHARE
-- while the phase is checked, so a concurrent stop either commits first
-- (then this raises 'sandbox_not_ready') or waits for this insert and its
-- trigger then deletes the new session. Sessions of the same sandbox that
-- were revoked or expired more than an hour ago are pruned here, so a
-- long-running sandbox does not collect dead rows. p_expires_at_ms 0 =
-- never expires.
CREATE FUNCTION gw_ssh_session_create(p_token_sha256 text, p_sandbox_id uuid, p_actor text,
                                      p_expires_at_ms bigint)
RETURNS TABLE (workspace text, created_at_ms bigint, expires_at_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    s sandboxes;
    x ssh_sessions;
BEGIN
    SELECT * INTO s FROM sandboxes WHERE id = p_sandbox_id AND deleted_at IS NULL FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sandbox_not_found' USING ERRCODE = 'P0001';
    END IF;
    IF s.phase <> 'READY' THEN
        RAISE EXCEPTION 'sandbox_not_ready' USING ERRCODE = 'P0001';
    END IF;
    DELETE FROM ssh_sessions d
    WHERE d.sandbox_id = p_sandbox_id
      AND (d.revoked_at < now() - interval '1 hour' OR d.expires_at < now() - interval '1 hour');
    INSERT INTO ssh_sessions (token_sha256, sandbox_id, workspace_id, created_by, expires_at)
    VALUES (p_token_sha256, p_sandbox_id, s.workspace_id, p_actor,
            CASE WHEN p_expires_at_ms > 0 THEN to_timestamp(p_expires_at_ms / 1000.0) END)
    RETURNING * INTO x;
    RETURN QUERY SELECT w.name, gw_ms(x.created_at), gw_ms(x.expires_at)
                 FROM workspaces w WHERE w.id = s.workspace_id;
END $$;

-- Marks a session revoked (RevokeSshSession). Compare-and-swap against
-- what the caller read before authorizing: returns 'revoked' (now),
-- 'already_revoked', or 'conflict' when the session is gone or belongs to
-- another sandbox than |p_sandbox_id| by now.
CREATE FUNCTION gw_ssh_session_revoke(p_token_sha256 text, p_sandbox_id uuid, p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    x ssh_sessions;
BEGIN
    SELECT * INTO x FROM ssh_sessions WHERE token_sha256 = p_token_sha256 FOR UPDATE;
    IF NOT FOUND OR x.sandbox_id <> p_sandbox_id THEN
        RETURN 'conflict';
    END IF;
    IF x.revoked_at IS NOT NULL THEN
        RETURN 'already_revoked';
    END IF;
    UPDATE ssh_sessions SET revoked_at = now(), revoked_by = p_actor
    WHERE token_sha256 = p_token_sha256;
    RETURN 'revoked';
END $$;

-- Sessions end with the sandbox's run: when its phase becomes STOPPED or it
-- is soft-deleted. (A row deleted outright cascades through the foreign key.)
CREATE FUNCTION gw_ssh_sessions_clear() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ssh_sessions WHERE sandbox_id = NEW.id;
    RETURN NULL;
END $$;

CREATE TRIGGER sandboxes_ssh_sessions_clear
AFTER UPDATE OF phase, deleted_at ON sandboxes
FOR EACH ROW
WHEN ((NEW.phase = 'STOPPED' AND OLD.phase IS DISTINCT FROM 'STOPPED')
      OR (NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL))
EXECUTE FUNCTION gw_ssh_sessions_clear();

-- ---- audit view (docs/audit.md) ---------------------------------------------------

-- Current SSH sessions without their token hashes.
CREATE VIEW audit_ssh_sessions AS
SELECT w.name AS workspace, s.name AS sandbox, x.sandbox_id, x.created_by, x.created_at,
       x.expires_at, x.revoked_at, x.revoked_by,
       CASE WHEN x.revoked_at IS NOT NULL THEN 'revoked'
            WHEN x.expires_at IS NOT NULL AND x.expires_at <= now() THEN 'expired'
            ELSE 'live' END AS state
FROM ssh_sessions x
JOIN sandboxes s ON s.id = x.sandbox_id
JOIN workspaces w ON w.id = x.workspace_id
ORDER BY x.created_at, s.name;
