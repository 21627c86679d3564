from fleet import Fleet
from fleet.paths import EXAMPLES

fleet = Fleet()
refund = {"order": "A-17", "amount": 250}            # over the limit: a person approves it
run = fleet.submit(EXAMPLES / "refund_approval.yaml", refund, follow=True)
for event in run.events(timeout=60):                  # steps as they start and end, then the end
    if event.get("status") == "waiting":              # parked: no message, no worker slot
        print(f"{event['node']} waits for signal {event['signal']!r}")
        # ... hours later, from a web hook or `fleet signal RUN approval --data '{...}'`:
        fleet.signal(run.id, "approval", {"approved": True, "by": "ana"})
print(run.get())   # {'outcome': 'refunded 250 for order A-17, approved by ana'}
