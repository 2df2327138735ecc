-- 003: what the compute drivers report.
--
-- Platform events (a driver's WatchSandboxes platform_event: started, exited
-- with code, killed by the memory limit, ...) become lifecycle events of
-- kind 'sandbox.platform_event' without changing the sandbox row, so
-- schedulers following the stream and WatchSandbox(follow_events) see them
-- in order with the phase changes they explain.
CREATE FUNCTION gw_sandbox_platform_event(p_id uuid, p_actor text, p_reason text,
                                          p_payload jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
    v_workspace text;
    v_phase text;
    v_labels jsonb;
BEGIN
    -- Only what the event needs (not the spec and status blobs).
    SELECT s.name, w.name, s.phase, s.labels INTO v_name, v_workspace, v_phase, v_labels
    FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
    WHERE s.id = p_id AND s.deleted_at IS NULL;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM gw_event(p_id, v_name, v_workspace, 'sandbox.platform_event', v_phase, v_phase,
                     p_actor, p_reason, v_labels, p_payload);
    RETURN true;
END $$;

-- Reconciliation reads every live sandbox of one driver.
CREATE INDEX sandboxes_driver_live ON sandboxes (driver, created_at) WHERE deleted_at IS NULL;
