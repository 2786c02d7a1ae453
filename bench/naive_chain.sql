-- The naive chain: what seed-data-migration.md's revisions do, each revision in one transaction (as Alembic
-- runs a revision). bench/run.py runs it beside the online writer to show the stalls the real chain avoids.
-- Never run this on a database you care about.

-- revision 0002: ADD COLUMN's ACCESS EXCLUSIVE lock and every row lock of the whole-table UPDATE are held
-- until the revision commits; SET NOT NULL scans the table under that lock.
ALTER TABLE meetings ADD COLUMN status varchar(20);
UPDATE meetings SET status = CASE WHEN end_time < now() THEN 'completed'
                                  WHEN start_time <= now() THEN 'in_progress' ELSE 'scheduled' END;
ALTER TABLE meetings ALTER COLUMN status SET DEFAULT 'scheduled';
ALTER TABLE meetings ALTER COLUMN status SET NOT NULL;
ALTER TABLE meetings ADD CONSTRAINT valid_status
    CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled'));

-- revision 0003: CREATE INDEX without CONCURRENTLY blocks writes to meetings for each build.
CREATE INDEX idx_meetings_time_range ON meetings (start_time, end_time);
CREATE INDEX idx_meetings_status ON meetings (status);
CREATE INDEX idx_meetings_creator ON meetings (created_by);

-- revision 0004: the same whole-table UPDATE and scanning SET NOT NULL, on users.
ALTER TABLE users ADD COLUMN phone varchar(20);
UPDATE users SET phone = 'unknown';
ALTER TABLE users ALTER COLUMN phone SET DEFAULT 'unknown';
ALTER TABLE users ALTER COLUMN phone SET NOT NULL;

-- revision 0005: one INSERT ... SELECT of every participant, then the rename (writes to the legacy table
-- during the copy are simply lost: no mirror trigger).
CREATE TABLE meeting_participants_new (
    meeting_id bigint NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status varchar(20) NOT NULL CHECK (status IN ('invited', 'accepted', 'declined', 'tentative')),
    PRIMARY KEY (meeting_id, user_id)
);
INSERT INTO meeting_participants_new
SELECT meeting_id, user_id, CASE WHEN attended THEN 'accepted' ELSE 'declined' END FROM meeting_participants;
CREATE INDEX ix_meeting_participants_new_user_id ON meeting_participants_new (user_id);
ALTER TABLE meeting_participants RENAME TO meeting_participants_legacy;
ALTER TABLE meeting_participants_new RENAME TO meeting_participants;
