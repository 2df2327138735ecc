-- 001: workspaces, members, sandboxes, lifecycle events, audit views.
--
-- Every state change and its event are written by one function call, which
-- is one statement and so one transaction. Events are inserted with
-- seq = NULL; gw_sequence_events() later gives them dense stream numbers in
-- commit order (see the comment there), which is what subscribers resume
-- from.

-- Milliseconds since the Unix epoch, the unit of every *_ms field on the wire.
CREATE FUNCTION gw_ms(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce((extract(epoch FROM t) * 1000)::bigint, 0) $$;

CREATE TABLE workspaces (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    labels           jsonb NOT NULL DEFAULT '{}',
    phase            text NOT NULL DEFAULT 'ACTIVE' CHECK (phase IN ('ACTIVE', 'TERMINATING')),
    resource_version bigint NOT NULL DEFAULT 1,
    created_by       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    terminating_at   timestamptz
);

INSERT INTO workspaces (id, name, created_by)
VALUES ('00000000-0000-4000-8000-000000000001', 'default', 'system');

CREATE TABLE workspace_members (
    id                uuid PRIMARY KEY,
    workspace_id      uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    principal_subject text NOT NULL,
    role              text NOT NULL CHECK (role IN ('USER', 'ADMIN')),
    resource_version  bigint NOT NULL DEFAULT 1,
    created_by        text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, principal_subject)
);

CREATE TABLE sandboxes (
    id               uuid PRIMARY KEY,
    workspace_id     uuid NOT NULL REFERENCES workspaces (id),
    name             text NOT NULL,
    owner            text NOT NULL,            -- principal that owns the sandbox
    created_by       text NOT NULL,            -- principal that created it
    labels           jsonb NOT NULL DEFAULT '{}',
    annotations      jsonb NOT NULL DEFAULT '{}',
    spec             bytea NOT NULL,           -- openshell.v1.SandboxSpec as received
    spec_json        jsonb NOT NULL DEFAULT '{}', -- the same, readable in psql
    driver           text NOT NULL DEFAULT '',
    phase            text NOT NULL DEFAULT 'PROVISIONING',
    status           bytea,                    -- openshell.v1.SandboxStatus, gateway-derived
    conditions       jsonb NOT NULL DEFAULT '[]',
    resource_version bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz                -- soft delete
);

-- Names are unique per workspace among sandboxes not deleted.
CREATE UNIQUE INDEX sandboxes_workspace_name ON sandboxes (workspace_id, name)
    WHERE deleted_at IS NULL;
CREATE INDEX sandboxes_workspace_created ON sandboxes (workspace_id, created_at, name)
    WHERE deleted_at IS NULL;
CREATE INDEX sandboxes_labels ON sandboxes USING gin (labels);
CREATE INDEX sandboxes_owner ON sandboxes (owner);

CREATE TABLE sandbox_events (
    id           bigserial PRIMARY KEY,  -- insertion order; not the stream order
    seq          bigint UNIQUE,          -- stream order; NULL until sequenced
    sandbox_id   uuid,                   -- NULL for workspace events
    sandbox_name text NOT NULL DEFAULT '',
    workspace    text NOT NULL,
    kind         text NOT NULL,
    prev_phase   text NOT NULL DEFAULT '',
    new_phase    text NOT NULL DEFAULT '',
    actor        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    labels       jsonb NOT NULL DEFAULT '{}', -- the sandbox's labels when it happened
    payload      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_events_pending ON sandbox_events (id) WHERE seq IS NULL;
CREATE INDEX sandbox_events_sandbox ON sandbox_events (sandbox_id, seq);
CREATE INDEX sandbox_events_workspace ON sandbox_events (workspace, seq);

-- The last stream number handed out. One row; updated only by
-- gw_sequence_events(), inside its lock.
CREATE TABLE event_sequence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq  bigint NOT NULL
);
INSERT INTO event_sequence VALUES (true, 0);

-- Records one event (seq pending) and wakes the sequencers.
CREATE FUNCTION gw_event(p_sandbox_id uuid, p_sandbox_name text, p_workspace text, p_kind text,
                         p_prev text, p_new text, p_actor text, p_reason text, p_labels jsonb,
                         p_payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sandbox_events (sandbox_id, sandbox_name, workspace, kind, prev_phase, new_phase,
                                actor, reason, labels, payload)
    VALUES (p_sandbox_id, coalesce(p_sandbox_name, ''), p_workspace, p_kind, coalesce(p_prev, ''),
            coalesce(p_new, ''), p_actor, coalesce(p_reason, ''), coalesce(p_labels, '{}'),
            coalesce(p_payload, '{}'));
    PERFORM pg_notify('gw_events', 'pending');
END $$;

-- Gives every committed pending event the next stream number, in insertion
-- order, and announces the new high-water mark.
--
-- Why not a bigserial as the cursor: sequence values are taken when a row is
-- inserted but become visible when its transaction commits, so a reader
-- could see 11 before 10 commits and skip 10 forever. Here numbering happens
-- after the fact, by one transaction at a time (advisory lock; the
-- statement after the lock takes a fresh snapshot), and only over rows that
-- are already committed. A reader therefore sees each run's numbers all at
-- once, above every earlier number, with no holes (the counter row is
-- transactional, so an aborted run leaves no gap).
CREATE FUNCTION gw_sequence_events() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_n    bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7236021547);
    SELECT last_seq INTO v_last FROM event_sequence WHERE singleton;
    WITH pending AS (
        SELECT id, v_last + row_number() OVER (ORDER BY id) AS s
        FROM sandbox_events WHERE seq IS NULL ORDER BY id LIMIT 10000
    )
    UPDATE sandbox_events e SET seq = p.s FROM pending p WHERE e.id = p.id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        UPDATE event_sequence SET last_seq = v_last + v_n WHERE singleton;
        PERFORM pg_notify('gw_events', 'seq:' || (v_last + v_n));
    END IF;
    RETURN v_last + v_n;
END $$;

-- ---- workspaces ------------------------------------------------------------

CREATE FUNCTION gw_workspace_create(p_id uuid, p_name text, p_labels jsonb, p_actor text)
RETURNS SETOF workspaces
LANGUAGE plpgsql AS $$
DECLARE
    w workspaces;
BEGIN
    INSERT INTO workspaces (id, name, labels, created_by)
    VALUES (p_id, p_name, coalesce(p_labels, '{}'), p_actor)
    RETURNING * INTO w;
    PERFORM gw_event(NULL, '', p_name, 'workspace.created', '', 'ACTIVE', p_actor, '', '{}',
                     jsonb_build_object('workspace_id', p_id, 'labels', coalesce(p_labels, '{}')));
    RETURN NEXT w;
END $$;

-- Two-phase delete (semantics.md §5). Returns 'not_found', 'default',
-- 'busy:<kinds>' (marked TERMINATING, still holds resources) or 'deleted'.
CREATE FUNCTION gw_workspace_delete(p_name text, p_actor text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    w workspaces;
    v_sandboxes bigint;
BEGIN
    IF p_name = 'default' THEN
        RETURN 'default';
    END IF;
    SELECT * INTO w FROM workspaces WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF w.phase = 'ACTIVE' THEN
        UPDATE workspaces SET phase = 'TERMINATING', terminating_at = now(),
                              resource_version = resource_version + 1
        WHERE id = w.id;
        PERFORM gw_event(NULL, '', p_name, 'workspace.terminating', 'ACTIVE', 'TERMINATING',
                         p_actor, '', '{}', '{}');
    END IF;
    SELECT count(*) INTO v_sandboxes FROM sandboxes
    WHERE workspace_id = w.id AND deleted_at IS NULL;
    IF v_sandboxes > 0 THEN
        RETURN 'busy:sandboxes';
    END IF;
    DELETE FROM sandboxes WHERE workspace_id = w.id;  -- soft-deleted history rows
    DELETE FROM workspaces WHERE id = w.id;           -- members cascade
    PERFORM gw_event(NULL, '', p_name, 'workspace.deleted', 'TERMINATING', '', p_actor, '', '{}',
                     jsonb_build_object('workspace_id', w.id));
    RETURN 'deleted';
END $$;

CREATE FUNCTION gw_member_add(p_id uuid, p_workspace text, p_subject text, p_role text,
                              p_actor text)
RETURNS TABLE (id uuid, workspace text, principal_subject text, role text,
               resource_version bigint, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    w workspaces;
    m workspace_members;
BEGIN
    SELECT * INTO w FROM workspaces WHERE name = p_workspace FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workspace_not_found' USING ERRCODE = 'P0001';
    END IF;
    IF (SELECT count(*) FROM workspace_members wm WHERE wm.workspace_id = w.id) >= 1000 THEN
        RAISE EXCEPTION 'member_limit' USING ERRCODE = 'P0001';
    END IF;
    INSERT INTO workspace_members (id, workspace_id, principal_subject, role, created_by)
    VALUES (p_id, w.id, p_subject, p_role, p_actor)
    RETURNING * INTO m;
    PERFORM gw_event(NULL, '', p_workspace, 'workspace.member_added', '', '', p_actor, '', '{}',
                     jsonb_build_object('principal_subject', p_subject, 'role', p_role));
    RETURN QUERY SELECT m.id, p_workspace, m.principal_subject, m.role, m.resource_version,
                        m.created_at;
END $$;

CREATE FUNCTION gw_member_remove(p_workspace text, p_subject text, p_actor text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    w workspaces;
BEGIN
    SELECT * INTO w FROM workspaces WHERE name = p_workspace;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    DELETE FROM workspace_members WHERE workspace_id = w.id AND principal_subject = p_subject;
    IF NOT FOUND THEN
        RETURN 'absent';
    END IF;
    PERFORM gw_event(NULL, '', p_workspace, 'workspace.member_removed', '', '', p_actor, '',
                     '{}', jsonb_build_object('principal_subject', p_subject));
    RETURN 'removed';
END $$;

-- ---- sandboxes --------------------------------------------------------------

CREATE FUNCTION gw_sandbox_create(p_id uuid, p_workspace text, p_name text, p_owner text,
                                  p_actor text, p_labels jsonb, p_annotations jsonb,
                                  p_spec bytea, p_spec_json jsonb, p_driver text, p_phase text,
                                  p_status bytea)
RETURNS SETOF sandboxes
LANGUAGE plpgsql AS $$
DECLARE
    w workspaces;
    s sandboxes;
BEGIN
    SELECT * INTO w FROM workspaces WHERE name = p_workspace FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workspace_not_found' USING ERRCODE = 'P0001';
    END IF;
    IF w.phase <> 'ACTIVE' THEN
        RAISE EXCEPTION 'workspace_terminating' USING ERRCODE = 'P0001';
    END IF;
    INSERT INTO sandboxes (id, workspace_id, name, owner, created_by, labels, annotations, spec,
                           spec_json, driver, phase, status)
    VALUES (p_id, w.id, p_name, p_owner, p_actor, coalesce(p_labels, '{}'),
            coalesce(p_annotations, '{}'), p_spec, coalesce(p_spec_json, '{}'), p_driver,
            p_phase, p_status)
    RETURNING * INTO s;
    PERFORM gw_event(p_id, p_name, p_workspace, 'sandbox.created', '', p_phase, p_actor, '',
                     s.labels, jsonb_build_object('owner', p_owner, 'driver', p_driver));
    RETURN NEXT s;
END $$;

-- Writes a new phase/status. p_expected_rv > 0 makes it conditional
-- (optimistic concurrency: raises 'conflict' when the row moved on).
CREATE FUNCTION gw_sandbox_update(p_id uuid, p_expected_rv bigint, p_phase text, p_status bytea,
                                  p_conditions jsonb, p_kind text, p_actor text, p_reason text,
                                  p_payload jsonb)
RETURNS SETOF sandboxes
LANGUAGE plpgsql AS $$
DECLARE
    old sandboxes;
    s sandboxes;
BEGIN
    SELECT * INTO old FROM sandboxes WHERE id = p_id AND deleted_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sandbox_not_found' USING ERRCODE = 'P0001';
    END IF;
    IF p_expected_rv > 0 AND old.resource_version <> p_expected_rv THEN
        RAISE EXCEPTION 'conflict' USING ERRCODE = 'P0001';
    END IF;
    UPDATE sandboxes SET phase = p_phase, status = coalesce(p_status, status),
                         conditions = coalesce(p_conditions, conditions),
                         resource_version = resource_version + 1, updated_at = now()
    WHERE id = p_id RETURNING * INTO s;
    PERFORM gw_event(p_id, s.name, (SELECT name FROM workspaces WHERE id = s.workspace_id),
                     p_kind, old.phase, p_phase, p_actor, p_reason, s.labels, p_payload);
    RETURN NEXT s;
END $$;

-- Soft delete: the row stays for audit with deleted_at set.
CREATE FUNCTION gw_sandbox_delete(p_id uuid, p_actor text, p_reason text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s sandboxes;
BEGIN
    UPDATE sandboxes SET deleted_at = now(), resource_version = resource_version + 1,
                         updated_at = now()
    WHERE id = p_id AND deleted_at IS NULL RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM gw_event(p_id, s.name, (SELECT name FROM workspaces WHERE id = s.workspace_id),
                     'sandbox.deleted', s.phase, '', p_actor, p_reason, s.labels, '{}');
    RETURN true;
END $$;

-- ---- audit views (docs/audit.md) ------------------------------------------------

CREATE VIEW audit_events AS
SELECT e.seq, e.created_at AS at, e.workspace, e.sandbox_name AS sandbox, e.kind,
       nullif(e.prev_phase, '') AS from_phase, nullif(e.new_phase, '') AS to_phase, e.actor,
       nullif(e.reason, '') AS reason, e.sandbox_id, e.payload
FROM sandbox_events e
ORDER BY e.seq NULLS LAST, e.id;

CREATE VIEW audit_created_deleted AS
SELECT e.seq, e.created_at AS at, e.workspace, e.sandbox_name AS sandbox,
       CASE e.kind WHEN 'sandbox.created' THEN 'created' ELSE 'deleted' END AS action,
       e.actor, e.sandbox_id
FROM sandbox_events e
WHERE e.kind IN ('sandbox.created', 'sandbox.deleted')
ORDER BY e.seq NULLS LAST, e.id;

CREATE VIEW audit_sandboxes_per_owner AS
SELECT s.owner, w.name AS workspace,
       count(*) FILTER (WHERE s.deleted_at IS NULL) AS live,
       count(*) FILTER (WHERE s.deleted_at IS NOT NULL) AS deleted,
       max(s.created_at) AS last_created_at
FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
GROUP BY s.owner, w.name
ORDER BY s.owner, w.name;

CREATE VIEW audit_sandboxes AS
SELECT s.id, w.name AS workspace, s.name, s.owner, s.created_by, s.driver, s.phase,
       s.labels, s.created_at, s.updated_at, s.deleted_at, s.resource_version
FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
ORDER BY s.created_at, s.name;

CREATE VIEW audit_workspace_membership AS
SELECT e.seq, e.created_at AS at, e.workspace, e.kind, e.payload ->> 'principal_subject' AS member,
       e.payload ->> 'role' AS role, e.actor
FROM sandbox_events e
WHERE e.kind IN ('workspace.member_added', 'workspace.member_removed')
ORDER BY e.seq NULLS LAST, e.id;
