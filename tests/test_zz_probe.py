from tests.test_payments import *  # noqa

async def test_probe(pay):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam, deliver=False)
    body, headers = pay.signed(pay.event("customer.subscription.created", sub))
    r = await pay.post_webhook(body, {**headers, "Stripe-Signature": headers["Stripe-Signature"] + ",t=x"})
    print("PROBE", r.status_code, r.text)
