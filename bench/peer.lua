-- wrk script for the peers of `python -m bench --peers`: chat.lua's request (same body, same
-- summary line), plus the headers in BENCH_EXTRA_HEADERS (one "name: value" a line), for a gateway
-- that takes its provider and upstream from headers (Portkey), or wants a different key.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "chat.lua")
for line in (os.getenv("BENCH_EXTRA_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.-)%s*$")
  assert(name, "BENCH_EXTRA_HEADERS: not a header line: " .. line)
  wrk.headers[name] = value
end
