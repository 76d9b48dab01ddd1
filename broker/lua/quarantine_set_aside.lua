-- quarantine_set_aside: move a key aside whatever it holds (a value lambdalite cannot use).
-- KEYS[1] key: the key to move aside, if it exists
-- KEYS[2] aside: its new name (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] problem: what is wrong with it, for the log ("is not a job RQ can read")
-- Returns: {mark, key, problem, action}, or an empty table when the key does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {ARGV[2], KEYS[1], ARGV[3], 'moved to ' .. KEYS[2]}
