from fleet import Fleet, Workflow

body = Workflow("tool-round", inputs=["n"])
call = body.step("call_tool", "math.add", a=body.input("n"), b=1)
body.output("n", call["result"])

wf = Workflow("count-to-three")
rounds = wf.loop("rounds", body, max_iterations=5, until=call["result"] >= 3, n=0)  # n: a constant
wf.output("n", rounds["n"])                 # the last round's outputs, by name
wf.output("rounds", rounds["iterations"])   # how many rounds ran; wf.agent(...) runs a body once

print(Fleet().submit(wf, {}).get(timeout=30))   # {'n': 3, 'rounds': 3}
