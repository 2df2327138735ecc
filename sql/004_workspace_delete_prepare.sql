-- 004: DeleteWorkspace asks the compute driver to clean up between marking
-- the workspace TERMINATING (and checking nothing is left in it) and
-- removing it (semantics.md §5): the first half becomes its own function.
CREATE FUNCTION gw_workspace_delete_prepare(p_name text, p_actor text) RETURNS text
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
    RETURN 'ready';
END $$;

-- The whole deletion: prepare (again: a TERMINATING workspace takes no new
-- sandboxes, so "ready" holds), then remove.
CREATE OR REPLACE FUNCTION gw_workspace_delete(p_name text, p_actor text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome text;
    v_id uuid;
BEGIN
    v_outcome := gw_workspace_delete_prepare(p_name, p_actor);
    IF v_outcome <> 'ready' THEN
        RETURN v_outcome;
    END IF;
    SELECT id INTO v_id FROM workspaces WHERE name = p_name;
    DELETE FROM sandboxes WHERE workspace_id = v_id;  -- soft-deleted history rows
    DELETE FROM workspaces WHERE id = v_id;           -- members cascade
    PERFORM gw_event(NULL, '', p_name, 'workspace.deleted', 'TERMINATING', '', p_actor, '', '{}',
                     jsonb_build_object('workspace_id', v_id));
    RETURN 'deleted';
END $$;
