-- 002: events no longer NOTIFY on every write.
--
-- pg_notify() takes a cluster-wide lock at commit and holds it through the
-- WAL flush, so a NOTIFY in every writing transaction serialized all of them
-- (bench/events_bench.py: one INSERT per transaction drops from ~6,700/s to
-- ~1,700/s with a NOTIFY). The writing gateway now runs the sequencer itself
-- right after its write commits, the sequencer still announces each batch
-- ('seq:N', one NOTIFY per batch), and every gateway runs the sequencer once
-- a second for rows written by anyone else (psql, a gateway that died).
CREATE OR REPLACE FUNCTION gw_event(p_sandbox_id uuid, p_sandbox_name text, p_workspace text,
                                    p_kind text, p_prev text, p_new text, p_actor text,
                                    p_reason text, p_labels jsonb, p_payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sandbox_events (sandbox_id, sandbox_name, workspace, kind, prev_phase, new_phase,
                                actor, reason, labels, payload)
    VALUES (p_sandbox_id, coalesce(p_sandbox_name, ''), p_workspace, p_kind, coalesce(p_prev, ''),
            coalesce(p_new, ''), p_actor, coalesce(p_reason, ''), coalesce(p_labels, '{}'),
            coalesce(p_payload, '{}'));
END $$;
