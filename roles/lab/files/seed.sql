-- Realistic lab data for the meetings schema at revision 0001 (users, meetings, legacy participants).
--
-- Parameters (psycopg2 named style; community.postgresql.postgresql_script named_args in the lab):
--   %(users)s         number of users            (lab default 10000,  large 200000)
--   %(meetings)s      number of meetings         (lab default 50000,  large 5000000)
--   %(participants)s  number of legacy participant rows, unique per (meeting_id, user_id)
--                     (lab default 100000, large 5000000; capped at meetings * users)
--
-- Set-based (generate_series), deterministic (setseed; serial plans: INSERT ... SELECT never runs in
-- parallel), times relative to the current hour so "past", "in progress" and "scheduled" all exist.
-- Runs as one transaction; a second run on a seeded database inserts nothing (each INSERT is guarded).
-- No percent signs below: the script goes through psycopg2 parameter interpolation.

SET LOCAL synchronous_commit = off;
SET LOCAL maintenance_work_mem = '256MB';
SET LOCAL work_mem = '64MB';
SELECT setseed(0.4242);

-- Users: created over the last three years.
INSERT INTO users (id, email, name, password_hash, created_at, updated_at)
SELECT u.id,
       'user' || u.id || '@example.com',
       (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Radia', 'Leslie',
              'Margaret', 'Dennis', 'Hedy', 'Niklaus', 'Sophie', 'Tim', 'Annie', 'John', 'Karen', 'Linus'])
           [1 + mod(u.id, 20)]
       || ' ' ||
       (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson',
              'Perlman', 'Lamport', 'Hamilton', 'Ritchie', 'Lamarr', 'Wirth', 'Wilson', 'Berners-Lee',
              'Easley', 'Backus', 'Jones', 'Torvalds'])[1 + mod(u.id / 20, 20)],
       'pbkdf2_sha256$600000$' || md5('salt' || u.id) || '$' || md5('pw' || u.id),
       u.created,
       least(u.created + u.edited_days * interval '1 day', date_trunc('hour', now()))
FROM (
    SELECT i AS id,
           date_trunc('hour', now()) - (random() * 1095) * interval '1 day' AS created,
           random() * 30 AS edited_days
    FROM generate_series(1, (%(users)s)::bigint) AS i
) AS u
WHERE NOT EXISTS (SELECT 1 FROM users);

-- Bulk load speed: a foreign key checked row by row costs ~15 us a row (10M participants: minutes);
-- checked once when re-added, it is one join. So the 0001 foreign keys and the participants' user_id
-- index are dropped for the load and re-created, with the same names, before this transaction commits
-- (it is all one transaction: nobody ever sees the tables without them).
ALTER TABLE meetings DROP CONSTRAINT meetings_created_by_fkey;
ALTER TABLE meeting_participants DROP CONSTRAINT meeting_participants_meeting_id_fkey;
ALTER TABLE meeting_participants DROP CONSTRAINT meeting_participants_user_id_fkey;
DROP INDEX ix_meeting_participants_user_id;

-- Meetings: from two years ago to six months ahead, on quarter hours, 15 minutes to 3 hours long;
-- one in two hundred placed around the current hour so some are in progress right now.
INSERT INTO meetings (id, title, description, start_time, end_time, created_by, created_at, updated_at)
SELECT m.id,
       (ARRAY['Standup', 'Sprint planning', 'Retrospective', 'Design review', 'One-on-one',
              'Incident review', 'Customer call', 'All hands', 'Roadmap sync', 'Interview'])
           [1 + mod(m.id, 10)] || ' #' || m.id,
       CASE WHEN mod(m.id, 3) = 0 THEN NULL ELSE 'Agenda and notes for meeting ' || m.id END,
       m.start_time,
       m.start_time + m.minutes * interval '1 minute',
       m.created_by,
       least(m.start_time, date_trunc('hour', now())) - m.lead_days * interval '1 day',
       least(m.start_time, date_trunc('hour', now())) - m.lead_days * interval '1 day'
FROM (
    SELECT i AS id,
           CASE WHEN mod(i, 200) = 0
                THEN date_trunc('hour', now()) - (1 + floor(random() * 4)) * interval '15 minutes'
                ELSE date_trunc('hour', now()) - interval '730 days'
                     + floor(random() * 912 * 96) * interval '15 minutes'
           END AS start_time,
           CASE WHEN mod(i, 200) = 0
                THEN 120 + 15 * floor(random() * 5)
                ELSE 15 * (1 + floor(random() * 12))
           END AS minutes,
           1 + floor(random() * (%(users)s)::bigint)::bigint AS created_by,
           floor(random() * 21) AS lead_days
    FROM generate_series(1, (%(meetings)s)::bigint) AS i
) AS m
WHERE NOT EXISTS (SELECT 1 FROM meetings);

-- Legacy participants: row n goes to meeting 1 + (n - 1) mod M, as that meeting's k-th participant with
-- k = (n - 1) / M; its user is the meeting's pseudo-random starting user plus k (mod U), so no
-- (meeting_id, user_id) pair repeats while k < U. About 70 in 100 attended.
INSERT INTO meeting_participants (meeting_id, user_id, attended)
SELECT 1 + mod(n - 1, p.m),
       1 + mod(mod((1 + mod(n - 1, p.m)) * 104729, p.u) + (n - 1) / p.m, p.u),
       random() < 0.7
FROM (SELECT (%(users)s)::bigint AS u, (%(meetings)s)::bigint AS m) AS p
CROSS JOIN LATERAL generate_series(1, least((%(participants)s)::bigint, p.m * p.u)) AS n
WHERE NOT EXISTS (SELECT 1 FROM meeting_participants);

ALTER TABLE meetings ADD CONSTRAINT meetings_created_by_fkey
    FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE meeting_participants ADD CONSTRAINT meeting_participants_meeting_id_fkey
    FOREIGN KEY (meeting_id) REFERENCES meetings (id) ON DELETE CASCADE;
ALTER TABLE meeting_participants ADD CONSTRAINT meeting_participants_user_id_fkey
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
CREATE INDEX ix_meeting_participants_user_id ON meeting_participants (user_id);

-- Explicit ids were inserted: move the identity sequences past them so the application's inserts work.
SELECT setval(pg_get_serial_sequence('users', 'id'), coalesce(max(id), 0) + 1, false) FROM users;
SELECT setval(pg_get_serial_sequence('meetings', 'id'), coalesce(max(id), 0) + 1, false) FROM meetings;

ANALYZE users;
ANALYZE meetings;
ANALYZE meeting_participants;
