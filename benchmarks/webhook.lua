-- wrk script: POSTs one signed TutorCruncher webhook body. Set BODY_FILE and SIGNATURE in the environment.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["webhook-signature"] = os.getenv("SIGNATURE")
