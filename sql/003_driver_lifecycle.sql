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
    s sandboxes;
BEGIN
    SELECT * INTO s FROM sandboxes WHERE id = p_id AND deleted_at IS NULL;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM gw_event(p_id, s.name, (SELECT name FROM workspaces WHERE id = s.workspace_id),
                     'sandbox.platform_event', s.phase, s.phase, p_actor, p_reason, s.labels,
                     p_payload);
    RETURN true;
END $$;

-- Reconciliation reads every live sandbox of one driver.
CREATE INDEX sandboxes_driver_live ON sandboxes (driver, created_at) WHERE deleted_at IS NULL;
