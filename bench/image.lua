-- wrk script: POST a product to /generate/image.
wrk.method = "POST"
wrk.body = '{"name":"Catnip Carnival","description":"A feather wand that turns any afternoon into a chase."}'
wrk.headers["Content-Type"] = "application/json"
