-- +goose Up
-- Raised inside the one-statement create path when a run names an unknown assistant, so
-- the whole statement (and every run it would have created) fails: SQLSTATE AS404, the
-- assistant id in DETAIL.
-- +goose StatementBegin
CREATE FUNCTION agentserver_unknown_assistant(assistant text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'assistant does not exist' USING ERRCODE = 'AS404', DETAIL = assistant;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION agentserver_unknown_assistant(text);
