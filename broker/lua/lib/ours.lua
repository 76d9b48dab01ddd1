-- ours: whether an idempotency record (broker.handler_api.idempotency) is an INPROGRESS claim of a given token.
-- Returns: nothing; defines the local function ours(raw, token), which returns true or false.
local function ours(raw, token)
  if not raw then return false end
  local ok, rec = pcall(cjson.decode, raw)
  return ok and type(rec) == 'table' and rec.status == 'INPROGRESS' and rec.token == token
end

