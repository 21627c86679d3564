from fleet import Fleet, Workflow

wf = Workflow("triage", inputs=["ticket"])
clean = wf.step("clean", "text.normalize", text=wf.input("ticket"))
urgent = wf.step("urgent", "text.contains", text=clean["text"], words=["refund", "broken"])
kw = wf.step("keywords", "text.keywords", text=clean["text"], top=3)          # runs beside `urgent`
loud = wf.step("escalate", "text.upper", text=clean["text"], when=urgent["found"])  # conditional
wf.output("answer", loud["text"] | clean["text"])   # first branch that ran
wf.output("keywords", kw["keywords"])

run = Fleet().submit(wf, {"ticket": "My blender arrived broken"})
print(run.get(timeout=30))      # {'answer': 'MY BLENDER ARRIVED BROKEN', 'keywords': [...]}
for step in run.trace():        # node, op, class, queue, worker, wait / run time, routing reason
    print(step.node, step.cls, step.worker, step.wait_s, step.run_s, step.route["reason"])
