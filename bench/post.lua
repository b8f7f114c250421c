-- wrk script: POST a product to /generate/description.
wrk.method = "POST"
wrk.body = '{"name":"Catnip Carnival","tags":["cat","toy","catnip"]}'
wrk.headers["Content-Type"] = "application/json"
