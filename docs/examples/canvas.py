from celery import chain, chord, group

from fleet import Fleet, Workflow
from fleet.examples.tasks import digest, normalise_ticket, notify

fleet = Fleet()  # the fleet's Celery app, now the current app: your shared tasks' too

wf = Workflow("shout", inputs=["text"])
# An existing Celery task as a step: sent by name, its dict's "words" taken as an output
count = wf.step("count", "celery:shop.count_words", text=wf.input("text"), outputs=["words"])
loud = wf.step("loud", "text.upper", text=wf.input("text"))
wf.output("answer", loud["text"])
wf.output("words", count["words"])

# The workflow as a signature, between your own tasks: the ticket goes to its one input
result = chain(normalise_ticket.s("  my   blender  broke "), wf.s(), notify.s()).apply_async()
print(result.get(timeout=30))  # [support] MY BLENDER BROKE (3 words)

# Side by side, and joined by a chord
print(group(wf.s(text="a b"), wf.s(text="c")).apply_async().get(timeout=30))
print(chord([wf.s(text="one"), wf.s(text="two")], digest.s()).apply_async().get(timeout=30))

# One run compiled to a Celery canvas: the same outputs as fleet.submit(wf, ...)
canvas = fleet.to_canvas(wf, {"text": "hello canvas"})
print(canvas.apply_async().get(timeout=30))
