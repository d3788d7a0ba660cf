-- +goose Up
-- A create of runs on threads applies the threads' multitask policies in its one
-- statement (createStatement): where a policy refuses a run, the statement calls this
-- function, which raises and so undoes everything the statement wrote. The SQLSTATE says
-- why and DETAIL names what: AST04 a thread that does not exist (its id), AST09 a busy
-- thread that rejects the run (the run in the way), AST10 a run that would interrupt a
-- busy thread, which the caller then joins in a transaction (cancelling the active run
-- is more than one statement's work). HINT is the refused run's position in the
-- statement's input (1-based), for a caller that creates the others without it.
-- +goose StatementBegin
CREATE FUNCTION agentserver_thread_refuses(action text, detail text, run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    CASE action
    WHEN 'missing' THEN
        RAISE EXCEPTION 'thread does not exist' USING ERRCODE = 'AST04', DETAIL = detail, HINT = run;
    WHEN 'busy' THEN
        RAISE EXCEPTION 'thread has an active run' USING ERRCODE = 'AST09', DETAIL = detail, HINT = run;
    ELSE
        RAISE EXCEPTION 'interrupting a thread''s active run takes a transaction' USING ERRCODE = 'AST10', DETAIL = detail, HINT = run;
    END CASE;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION agentserver_thread_refuses(text, text, bigint);
