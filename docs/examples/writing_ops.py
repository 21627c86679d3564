from functools import cache

from fleet.sdk import op, preloader

@op("shop.order_status", kind="tool", classes=("io", "cpu"), outputs=("status",), retries=2)
def order_status(order_id: int) -> dict:
    orders = {1042: "shipped"}          # a real op asks the order system (http.request does)
    return {"status": orders.get(order_id, "unknown")}

@op("vision.caption", kind="model", classes=("gpu", "cpu"), outputs=("text",),
    units=lambda args: len(args["images"]), unit="image",          # size of a call, for routing
    samples=[{"images": ["..."]}, {"images": ["..."] * 8}])        # what `fleet profile` runs
def caption(images: list[str]) -> dict:
    return {"text": [captioner()(image) for image in images]}

@preloader("captioner")   # a class with preload = ["captioner"] loads it at start-up
@cache                    # once per worker process; the first call loads it otherwise
def captioner():
    return lambda image: f"an image named {image}"   # a real one loads a model here
