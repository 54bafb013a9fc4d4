-- wrk script: POSTs distinct signed TutorCruncher bodies (never the same body twice: the bridge's
-- dedup window would answer a repeat without publishing).
--   TEMPLATE_FILE    a body with one __ID__ per event (tc-bench template)
--   SIGNATURES_FILE  the signature of body i on line i - FROM + 1 (tc-bench signatures)
--   FROM             index of the first body
-- Body i replaces the k-th __ID__ with "i-k" (the same rule as tc-bench's BodyTemplate). Thread t of
-- T posts bodies FROM+t, FROM+t+T, ...; a thread that runs out of signatures stops (reported).
local threads = {}
local thread_count = 0

function setup(thread)
    thread:set("tid", thread_count)
    thread_count = thread_count + 1
    table.insert(threads, thread)
end

function init(args)
    local file = assert(io.open(os.getenv("TEMPLATE_FILE"), "rb"))
    local template = file:read("*a")
    file:close()
    parts = {}
    local position = 1
    while true do
        local s, e = string.find(template, "__ID__", position, true)
        if not s then break end
        table.insert(parts, string.sub(template, position, s - 1))
        position = e + 1
    end
    table.insert(parts, string.sub(template, position))
    signatures = {}
    for line in io.lines(os.getenv("SIGNATURES_FILE")) do table.insert(signatures, line) end
    from = tonumber(os.getenv("FROM") or "0")
    step = tonumber(os.getenv("THREADS") or "2")
    next_index = tid
    exhausted = 0
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
end

function request()
    local slot = next_index + 1
    if slot > #signatures then
        exhausted = 1
        wrk.thread:stop()
        slot = 1
    end
    next_index = next_index + step
    local index = from + slot - 1
    local pieces = { parts[1] }
    for k = 2, #parts do
        pieces[#pieces + 1] = index .. "-" .. (k - 1)
        pieces[#pieces + 1] = parts[k]
    end
    wrk.headers["webhook-signature"] = signatures[slot]
    return wrk.format(nil, nil, nil, table.concat(pieces))
end

function done(summary, latency, requests)
    local exhausted_threads = 0
    for _, thread in ipairs(threads) do exhausted_threads = exhausted_threads + (thread:get("exhausted") or 0) end
    io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d exhausted_threads=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), summary.errors.status,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, exhausted_threads))
end
