-- The application during an online run: bench/run.py runs this with pgbench (as the application role)
-- through the whole chain, once beside the pipeline's migration step and once beside the naive statements.
-- Every statement is valid at every revision (0001 .. 0005): participants are moved (deleted and inserted
-- again as they were) rather than inserted with columns only one side of 0005 has.
-- bench/run.py passes the table sizes: -D users=<rows> -D meetings=<rows>.
\set uid random(1, :users)
\set mid random(1, :meetings)
\set tag random(1, 2000000000)
BEGIN;
UPDATE meetings SET updated_at = now() WHERE id = :mid;
UPDATE users SET updated_at = now() WHERE id = :uid;
INSERT INTO users (email, name, password_hash)
    VALUES ('writer-' || :client_id || '-' || :tag || '@example.org', 'writer', 'x') ON CONFLICT DO NOTHING;
INSERT INTO meetings (title, start_time, end_time, created_by)
    VALUES ('writer', now(), now() + interval '1 hour', :uid);
WITH moved AS (
    DELETE FROM meeting_participants
     WHERE (meeting_id, user_id) IN (SELECT meeting_id, user_id FROM meeting_participants WHERE meeting_id = :mid LIMIT 1)
    RETURNING *
) INSERT INTO meeting_participants SELECT * FROM moved;
END;
