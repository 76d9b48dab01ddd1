-- utc: RQ's timestamp format (%Y-%m-%dT%H:%M:%S.%fZ) of a Unix time, in Lua, which has no calendar
-- (the days-to-date conversion is Howard Hinnant's civil_from_days).
-- Returns: nothing; defines the local function utc(sec, usec), which returns the text.
local function utc(sec, usec)
  local days = math.floor(sec / 86400)
  local rest = sec - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day, math.floor(rest / 3600),
                       math.floor(rest % 3600 / 60), rest % 60, usec)
end

