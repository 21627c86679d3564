from fleet import Fleet, Workflow

wf = Workflow("score", inputs=["ticket"])
urgent = wf.step("urgent", "text.contains", text=wf.input("ticket"), words=["refund", "broken"])
wf.output("urgent", urgent["found"])

tickets = ["My blender arrived broken", "Where is my order?", "I want a refund"]
runs = Fleet().submit_many(wf, [{"ticket": t} for t in tickets])  # all checked, then sent
print([run.get(timeout=30)["urgent"] for run in runs])  # [True, False, True]
