"""Generate the Ledgerly support-ticket routing dataset (``data/tickets.jsonl``).

Ledgerly is a fictional cloud accounting SaaS for small businesses. Every ticket is routed to one of eight
internal queues and given a priority P1..P4; the model also writes a one-line summary. The base model
cannot know Ledgerly's queue names, so it scores ~0 on queue accuracy until it is fine-tuned.

Each line is ``{"instruction": "Subject: ...\\n\\n<body>", "output": "<compact JSON string>"}`` where the
output is ``{"queue": ..., "priority": ..., "summary": ...}``.

Deterministic (``random.Random(20261123)``): running it twice gives byte-identical output. Stdlib only.

    python examples/support-tickets/make_data.py
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

SEED = 20261123
N_TICKETS = 600
OUT_PATH = Path(__file__).resolve().parent / "data" / "tickets.jsonl"

MIN_BODY_WORDS = 20
MAX_BODY_WORDS = 55
MIN_SUMMARY_WORDS = 6
MAX_SUMMARY_WORDS = 12
# A candidate whose word 3-shingle Jaccard similarity to an accepted ticket of the same queue exceeds this
# is discarded and redrawn, so no two tickets are near-identical.
MAX_JACCARD = 0.6
TYPO_RATE = 0.1
INTRO_RATE = 0.25

QUEUES = [
    "billing-refunds",
    "billing-invoices",
    "bank-feeds",
    "payroll",
    "access-sso",
    "api-integrations",
    "reports-export",
    "mobile-app",
]
# Tickets per priority within each queue: 75 per queue, ~15% P1, 30% P2, 35% P3, 20% P4 overall.
PRIORITY_COUNTS = {"P1": 11, "P2": 23, "P3": 26, "P4": 15}

Slots = dict[str, str]


class Variant(NamedTuple):
    """One wording of a ticket scenario. All three fields are ``str.format`` templates over the slots."""

    subjects: str  # alternatives separated by " | "
    body: str
    summary: str


# A scenario is a list of paraphrases of the same problem; a queue has scenarios per priority group.
# "P23" scenarios are shared by P2 and P3: only the priority cue sentence tells them apart.
Scenario = list[Variant]

# --------------------------------------------------------------------------------------------------
# Slot vocabularies (all people and businesses are invented; no addresses, emails or phone numbers)
# --------------------------------------------------------------------------------------------------

FIRST_NAMES = [
    "Marisol",
    "Tobias",
    "Anneliese",
    "Dario",
    "Priyanka",
    "Eamon",
    "Wren",
    "Corentin",
    "Ilse",
    "Thaddeus",
    "Noor",
    "Bastian",
    "Odile",
    "Kofi",
    "Saoirse",
    "Lucan",
    "Mireille",
    "Rafferty",
    "Yusra",
    "Fenna",
    "Caspian",
    "Ottilie",
    "Jovan",
    "Liesel",
    "Ambrose",
    "Tamsin",
    "Idris",
    "Greta",
    "Soren",
    "Beatrix",
]
LAST_NAMES = [
    "Quenby",
    "Fenwright",
    "Kettleby",
    "Ashcombe",
    "Wrenfield",
    "Penhallow",
    "Larkspur",
    "Tennyfield",
    "Castellane",
    "Quillfeather",
    "Harrowgate",
    "Vantreece",
    "Elderby",
    "Dunmore",
    "Brightwater",
    "Marchbank",
    "Oakhollow",
    "Stellwood",
    "Ravensholm",
    "Pilkerton",
]
BUSINESSES = [
    "Juniper Lane Bakery",
    "Copperkettle Cafe",
    "Northwind Joinery",
    "Bluefin Plumbing",
    "Tallgrass Landscaping",
    "Maple & Moss Florists",
    "Greyhound Print Co",
    "Harborview Dental",
    "Saltmarsh Surf School",
    "Ironbark Builders",
    "Little Fern Nursery",
    "Brightside Cleaning",
    "Quarry Hill Brewing",
    "Velvet Thread Tailoring",
    "Peakline Physio",
    "Oak & Ember Pizza",
    "Lantern Street Books",
    "Cobalt Bike Repair",
    "Sunnyside Pet Grooming",
    "Harvest Table Catering",
    "Fieldnote Studio",
    "Pinecrest Electrical",
    "Wildflower Yoga",
    "Stonebridge Removals",
]
OLD_NAMES = ["Smith & Daughter Ltd", "JL Bakes", "Northwind Carpentry", "Fern & Co", "Studio Eleven"]
BANKS = [
    "Harbor Credit Union",
    "Northgate Bank",
    "Summit Savings",
    "Riverbend Federal",
    "Evergreen Community Bank",
    "Pioneer Trust",
    "Lakeshore Bank",
    "Crestline Credit Union",
    "Meridian Mutual",
    "Bluewater Bank",
]
PLAN_PRICE = {"Starter": 19, "Pro": 49, "Scale": 99}
CURRENCIES = ["$", "$", "£", "€"]
CURRENCY_NAMES = ["euros", "pounds", "Canadian dollars", "Australian dollars"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DEVICES = [
    "iPhone 13",
    "iPhone 15 Pro",
    "iPhone SE",
    "iPhone 14",
    "Pixel 7",
    "Pixel 8a",
    "Galaxy S23",
    "Galaxy A54",
    "OnePlus 11",
    "Moto G84",
]
APP_VERSIONS = ["4.12.0", "4.12.3", "4.13.0", "4.13.2", "4.14.1", "5.0.0"]
IDPS = ["Okta", "Entra ID", "Google Workspace", "OneLogin", "JumpCloud"]
SAML_ERRORS = ["InvalidAudience", "Signature validation failed", "NameID missing", "Response expired"]
INTEGRATIONS = ["Shopify", "Stripe", "Square", "WooCommerce", "PayPal"]
POS_SYSTEMS = ["Lightspeed", "Toast", "Clover", "Vend", "Etsy"]
WEBHOOK_EVENTS = ["invoice.paid", "contact.created", "bill.approved", "payment.received"]
ZAPS = ["New Contact", "New Invoice", "Paid Bill"]
REPORTS = [
    "profit and loss report",
    "balance sheet",
    "cash flow statement",
    "aged receivables report",
    "trial balance",
    "general ledger",
    "VAT return report",
]
ERROR_CODES = ["E-1042", "E-2210", "ERR 317", "code 5031", "E-0877", "ERR 4409", "code 228"]
HTTP_ERRORS = ["500", "502", "503", "504"]
TIMES = ["6am", "7:30am", "8am", "9:15am", "midnight", "2am", "10am"]

# Realistic slips, applied to about one ticket in ten (never to the words that carry the routing signal).
TYPOS = {
    "receive": "recieve",
    "account": "acount",
    "because": "becuase",
    "transactions": "transcations",
    "until": "untill",
    "which": "wich",
    "really": "realy",
    "the": "teh",
    "again": "agian",
    "anything": "anyting",
    "already": "allready",
    "please": "pls",
    "since": "sinse",
}

# --------------------------------------------------------------------------------------------------
# Openers, closers and priority cues
# --------------------------------------------------------------------------------------------------

OPENERS = [
    "",
    "",
    "Hi,",
    "Hi team,",
    "Hello,",
    "Hey there,",
    "Good morning,",
    "Hi Ledgerly support,",
    "Hello support team,",
    "Hi all,",
    "Afternoon,",
]
CLOSERS = [
    "",
    "Thanks,\n{first}",
    "Thanks in advance,\n{first} ({biz})",
    "Cheers, {first}",
    "Regards,\n{first} {last}",
    "Many thanks, {first} at {biz}",
    "- {first}",
    "Best,\n{first} {last}, {biz}",
    "Thank you!\n{first}",
    "Ta, {first}",
]
INTROS = [
    "I run {biz}.",
    "I do the books for {biz}.",
    "I'm the owner of {biz}.",
    "This is {first} from {biz}.",
    "I look after the accounts at {biz}.",
]

# P1: business-stopping and urgent (the scenario itself says the whole company / all customers / today).
P1_CUES = [
    "This is urgent, please escalate it.",
    "We are completely stopped, please help ASAP.",
    "Please treat this as an emergency.",
    "We need someone on this immediately.",
    "The whole business is at a standstill until this is fixed.",
    "URGENT - please respond as soon as you can.",
    "Critical for us, please drop everything and look.",
]
P1_SUBJECT_TAGS = ["URGENT: {s}", "{s} - URGENT", "[Urgent] {s}", "{s}!!", "{s}", "{s}"]

# P2: blocks one person or workflow, or money is at stake; no workaround.
P2_CUES = [
    "I'm completely stuck on this and can't get my work done.",
    "This is blocking me and I can't find any way around it.",
    "It's holding up my month-end close, so please look at it soon.",
    "I can't move on with my work until this is sorted.",
    "Please prioritise this, I'm blocked until it's fixed.",
    "There's no workaround I can see, so I'm stuck for now.",
    "This is stopping me from finishing today's work.",
    "Real money is involved here, so I need it resolved quickly.",
]
QUEUE_P2_CUES = {
    "billing-refunds": [
        "That's {amt} we really need back this month.",
        "Cash is tight, so I need that money back soon.",
    ],
    "billing-invoices": [
        "Our accountant can't book the expense without a correct invoice, so we're stuck.",
        "I can't file our expense claims until I have a correct copy.",
    ],
    "bank-feeds": [
        "I can't reconcile anything this month until it's fixed.",
        "Our cash position is wrong until this works, so I'm blocked.",
    ],
    "payroll": [
        "The pay date is this Friday, so I need this sorted before then.",
        "Our staff are out of pocket until this is corrected.",
    ],
    "access-sso": [
        "I can't get into the account at all, so I'm blocked.",
        "They can't do any work until this is fixed.",
    ],
    "api-integrations": [
        "Our order sync is stuck until this works again.",
        "Our integration is effectively down for this workflow.",
    ],
    "reports-export": [
        "Our accountant needs these figures this week and I can't produce them.",
        "I can't send the numbers to the bank until this is right.",
    ],
    "mobile-app": [
        "I can't submit my expenses at all while I'm on the road.",
        "I'm out of pocket until these expenses go through.",
    ],
}

# P3: a normal problem; not urgent or a workaround exists.
P3_CUES = [
    "It's a bit annoying, but I can get by for now.",
    "Whenever you get a chance, it isn't stopping me.",
    "Not a big deal, just wanted to flag it so it gets fixed eventually.",
]
# "Workaround" wording only fits product faults, not money owed or invoice paperwork.
P3_WORKAROUND_CUES = [
    "Not urgent, I've found a workaround for now.",
    "No rush, I can work around it in the meantime.",
    "Low priority - a workaround is doing the job for the moment.",
]
QUEUE_P3_CUES = {
    "billing-refunds": [
        "No huge rush, a credit on next month's bill would also be fine.",
        "Not urgent - happy to wait for the next billing cycle.",
    ],
    "billing-invoices": [
        "I can use the old copy for now, so no rush.",
        "Not urgent, our bookkeeper can wait a bit.",
    ],
    "bank-feeds": [
        "I'm adding the missing ones by hand for now, so no rush.",
        "For now I'm uploading a statement file as a stopgap.",
    ],
    "payroll": [
        "I've corrected it by hand this time and the next pay date is weeks away.",
        "We fixed it manually for now, so it's not urgent.",
    ],
    "access-sso": [
        "They can use a backup login for now, so not urgent.",
        "I can still get in from my laptop, so it's not blocking.",
    ],
    "api-integrations": [
        "Our retry logic is coping for now, so no rush.",
        "We're running the sync manually in the meantime.",
    ],
    "reports-export": [
        "I can rebuild it in a spreadsheet for now, so not urgent.",
        "Exporting to Excel instead works as a workaround.",
    ],
    "mobile-app": [
        "I'm using the website on my laptop in the meantime.",
        "I can type the receipts in manually for now, so no rush.",
    ],
}

# P4: a question, how-to or feature request (the scenario itself is phrased as a question or idea).
P4_TAILS = [
    "",
    "",
    "Just a question, nothing is broken.",
    "Not a problem as such, just curious.",
    "Thanks for any pointers.",
    "Not urgent at all.",
    "Curious what the options are.",
]
P4_SUBJECT_TAGS = ["Question: {s}", "Quick question - {s}", "{s}", "{s}", "{s}"]

# --------------------------------------------------------------------------------------------------
# Scenarios. Ticket text never contains a queue id, not even as plain words ("payroll", "bank feed",
# "mobile app"): the model has to infer the queue from what the customer describes.
# --------------------------------------------------------------------------------------------------

V = Variant

BILLING_REFUNDS: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "Charged {n} times overnight | Card hit with repeated charges | Account overdrawn by you",
                "Our card was charged {n} times overnight, {price} each time, and the business account is "
                "now overdrawn. We can't pay suppliers today. Refund the extra charges now please.",
                "Card charged {n} times overnight, account overdrawn, urgent refund",
            ),
            V(
                "Repeated charges from Ledgerly | {n} payments taken | Refund needed today",
                "Ledgerly took {n} payments of {price} from us since last night. Our account is overdrawn "
                "and card payments at the shop are being declined. We need the money back today.",
                "Repeated overnight charges overdrew account, refund needed today",
            ),
        ],
        [
            V(
                "You charged {big} instead of {price} | Huge wrong charge | Massive overcharge today",
                "You debited {big} from our business account instead of the usual {price}. That was our "
                "rent money and suppliers are due today. Refund it immediately.",
                "Charged {big} instead of {price}, urgent refund needed",
            ),
            V(
                "Wrong amount taken | {big} charge from Ledgerly | Overcharged, refund now",
                "A {big} charge from Ledgerly just cleared; our plan is {price}. We can't cover today's "
                "supplier payments until it's refunded.",
                "Overcharged {big} on a {price} plan, urgent refund",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "Charged twice this month | Double charge on our card | Two payments taken for {plan}",
                "We were charged twice for our {plan} plan renewal on {month} {day}: two payments of "
                "{price} on the card ending {last4}. Please refund the duplicate.",
                "Customer double charged for {month} {plan} plan renewal",
            ),
            V(
                "Duplicate {plan} charge | Billed twice? | Two identical charges",
                "Our card ending {last4} shows two {price} charges for the {plan} subscription on {month} "
                "{day}. Can you refund one of them?",
                "Duplicate {price} {plan} charge on {month} {day}, refund requested",
            ),
        ],
        [
            V(
                "Billed after cancelling | Charge after cancellation | Still being charged?",
                "I cancelled our {plan} subscription on {month} {day} but you still took {price} on "
                "{next_month} {day2}. Please refund that charge.",
                "Charged {price} after cancelling {plan} subscription, wants refund",
            ),
            V(
                "Charged after we cancelled | Unexpected renewal charge | Please refund renewal",
                "We closed our Ledgerly subscription back in {month}, yet the card was charged {price} "
                "again this week. I want that money refunded.",
                "Renewal charge taken after {month} cancellation, refund requested",
            ),
        ],
        [
            V(
                "Annual plan bought by mistake | Refund annual payment please | Wrong billing period",
                "I clicked annual billing by mistake and paid {annual} for {plan}. We meant to stay "
                "monthly. Can you refund the annual payment and move us back?",
                "Accidental annual {plan} purchase, requests refund and monthly billing",
            ),
            V(
                "Switched to yearly without asking | Undo annual upgrade | Annual charge refund",
                "Our admin switched us to the yearly {plan} plan ({annual}) without asking. Please reverse "
                "it and refund the difference so we stay on monthly.",
                "Unwanted switch to annual {plan}, wants refund of difference",
            ),
        ],
        [
            V(
                "Cancel and refund | Closing the business | Cancel account + refund unused months",
                "{biz} is closing at the end of {month}. Please cancel our account and refund the unused "
                "months on our annual {plan} plan.",
                "Business closing, wants cancellation and refund of unused months",
            ),
            V(
                "Shutting down, please cancel | Cancellation and refund | We're closing",
                "We're shutting down {biz} and won't need Ledgerly after {month}. Can you cancel and pay "
                "back what's left of the yearly {plan} fee?",
                "Closing business, cancel and refund remaining annual {plan} fee",
            ),
        ],
        [
            V(
                "Refund not received | Where is my refund? | Promised refund missing",
                "Your team agreed on {month} {day} to refund {amt} for the service outage, but nothing has "
                "reached our card yet.",
                "Agreed {amt} outage refund from {month} {day} not received",
            ),
            V(
                "Refund still pending | Refund hasn't arrived | Missing refund",
                "I was told a {amt} refund was processed on {month} {day}. It still hasn't appeared on the "
                "card ending {last4}.",
                "Promised {amt} refund from {month} {day} not received",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Refund policy | Refunds on annual plans | Cancelling mid-year",
                "What's your refund policy if we cancel an annual {plan} plan partway through the year? Do "
                "we get the unused months back?",
                "Asks about refund policy for cancelling annual {plan} plan",
            ),
            V(
                "Annual plan refunds? | Cancelling a yearly plan | Refund question",
                "If we cancel our yearly {plan} subscription in {month}, would the remaining months be "
                "refunded or just left to run out?",
                "Asks whether unused months are refunded on annual cancellation",
            ),
        ],
        [
            V(
                "Downgrade refund question | Downgrading mid-cycle | Refund or credit?",
                "If I downgrade from {plan} to a cheaper plan halfway through the month, do I get a refund "
                "for the difference or a credit?",
                "Asks whether mid-cycle downgrade gives refund or credit",
            ),
            V(
                "Moving to a smaller plan | Refunds when downgrading | Plan downgrade and refunds",
                "How do refunds work when you move to a smaller plan mid-cycle? Is the difference paid back "
                "to the card?",
                "Asks how refunds work when downgrading mid-cycle",
            ),
        ],
        [
            V(
                "Self-service refunds | Refund button? | Idea for the billing page",
                "Could you add a button to request a refund for a duplicate charge straight from the "
                "billing page? Writing in each time is slow.",
                "Feature request for self-service refund button on billing page",
            ),
            V(
                "Refund status on billing page | Tracking refunds | Idea: show refund progress",
                "Would be great to see refund status on the billing page, so we know when money is coming "
                "back.",
                "Feature request to show refund status on billing page",
            ),
        ],
    ],
}

BILLING_INVOICES: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "Invoices needed for audit tomorrow | Audit blocked by your invoices | "
                "Corrected invoices TODAY",
                "Our auditors arrive tomorrow morning and every Ledgerly invoice this year shows the wrong "
                "company details. We need corrected invoices today or the audit can't go ahead.",
                "All subscription invoices wrong, corrected copies needed before audit",
            ),
            V(
                "Audit tomorrow, invoices wrong | Reissue all invoices today | Audit at risk",
                "The audit starts first thing tomorrow and none of your {year} invoices carry our "
                "registered name. Without reissued invoices today the whole audit is blocked.",
                "All {year} subscription invoices need reissuing before tomorrow's audit",
            ),
        ],
        [
            V(
                "Paid invoice marked unpaid | Suspension notice but we paid | Account suspension tonight?",
                "The billing page says our {month} invoice is unpaid and the whole workspace will be "
                "suspended tonight, but we paid it on {next_month} {day}. Fix it before all {n} of us are "
                "cut off.",
                "Paid {month} invoice marked unpaid, workspace suspension tonight",
            ),
            V(
                "Final notice for a paid invoice | Workspace shutting off today | Invoice status wrong",
                "We got a final notice that our workspace shuts off today over the {month} invoice, which "
                "was paid weeks ago. The entire team will be locked out of the books.",
                "Paid {month} invoice flagged overdue, workspace shutdown today",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "VAT number missing on receipt | Receipt without our VAT number | VAT ID not on invoice",
                "Our VAT number isn't on the receipts Ledgerly sends us. I added it in billing settings in "
                "{month}, but the {next_month} receipt still leaves it out.",
                "VAT number missing from Ledgerly receipts despite being saved",
            ),
            V(
                "No VAT registration on receipt | VAT details missing | Receipt needs our VAT number",
                "The subscription receipt for {month} doesn't show our VAT registration number, even though "
                "it's saved in our billing details.",
                "{month} subscription receipt missing our VAT registration number",
            ),
        ],
        [
            V(
                "Wrong company name on invoice | Please reissue invoice | Old business name on bill",
                "Your invoice for our subscription still shows our old trading name, {old}, instead of "
                "{biz}. Can you reissue the {month} invoice with the right name?",
                "Subscription invoice shows old business name, needs reissue",
            ),
            V(
                "Invoice still has old name | Update name on invoices | Rebranded, invoices not",
                "We renamed to {biz} in {month} but Ledgerly's invoices still say {old} and the old "
                "address. Please correct the {next_month} one.",
                "Invoices still show old name after rename, correction needed",
            ),
        ],
        [
            V(
                "Invoice after plan change looks wrong | Proration on our bill | Plan change on invoice",
                "I moved from {plan_a} to {plan_b} on {month} {day}, but the invoice shows a full month of "
                "{plan_a} plus a separate {plan_b} line. The proration looks off.",
                "Invoice proration wrong after moving from {plan_a} to {plan_b}",
            ),
            V(
                "Bill shows old plan | Wrong plan on invoice | Invoice lines after switching plan",
                "After switching our plan to {plan_b} mid-month, this month's bill still lists {plan_a} as "
                "the plan. Can you check the invoice lines?",
                "Invoice still lists {plan_a} after switching to {plan_b}",
            ),
        ],
        [
            V(
                "Missing receipts in billing history | Can't find our invoices | Receipts for {month}?",
                "I can't find Ledgerly's receipts for {month} and {month2} in the billing history. Our "
                "bookkeeper needs them for the expense records.",
                "Ledgerly receipts for {month} and {month2} missing from billing history",
            ),
            V(
                "Older invoices not available | Billing history incomplete | Download old invoices",
                "The billing history page only goes back to {next_month}. Where can I download your "
                "invoices for {month} and earlier?",
                "Cannot download Ledgerly invoices for {month} and earlier",
            ),
        ],
        [
            V(
                "Invoice currency is wrong | Currency on your invoices | Bills in the wrong currency",
                "Your subscription invoices come in US dollars but we pay in {curname}. Can the invoice show "
                "{curname} so it matches our bank statement?",
                "Subscription invoices in US dollars, customer pays in {curname}",
            ),
            V(
                "Wrong currency since {month} | Invoice amounts in wrong currency | Currency changed on bill",
                "Since {month} our Ledgerly invoices are issued in the wrong currency. We're billed in "
                "{curname}, so the amounts on the invoice don't match.",
                "Subscription invoices issued in wrong currency since {month}",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "PO number on invoices | Purchase order reference | Adding a reference to your bills",
                "Our finance team needs a purchase order number on every supplier invoice. Is there a way "
                "to add one to the invoices Ledgerly sends us?",
                "Asks how to add PO number to subscription invoices",
            ),
            V(
                "PO reference on your invoices | Invoices need a PO | Purchase orders",
                "Can I put our PO reference on Ledgerly's monthly invoices? Our approval process rejects "
                "invoices without one.",
                "Asks whether a PO reference can appear on invoices",
            ),
        ],
        [
            V(
                "Send invoices to our accountant | Invoice copies | Second recipient for receipts",
                "Is it possible for a copy of each Ledgerly invoice to go to our accountant automatically "
                "as well as to me?",
                "Asks whether invoice copies can go to accountant automatically",
            ),
            V(
                "Receipts for our bookkeeper | Bookkeeper access to invoices | Sharing receipts",
                "Could our bookkeeper {emp_first} receive your monthly receipts too, without having to be an "
                "admin on the account?",
                "Asks whether bookkeeper can receive receipts without admin rights",
            ),
        ],
        [
            V(
                "One invoice per year? | Annual invoicing | Yearly bill instead of monthly",
                "We'd prefer one invoice a year for our {plan} plan instead of twelve. How do we switch to "
                "annual invoicing, and when would the first one be issued?",
                "Asks how to switch {plan} plan to annual invoicing",
            ),
            V(
                "Discount on annual invoice | Yearly billing question | Annual plan invoice",
                "If we move the {plan} plan to yearly billing, does the invoice show the discount as a "
                "separate line?",
                "Asks whether annual {plan} invoice shows discount separately",
            ),
        ],
    ],
}

BANK_FEEDS: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "No bank accounts syncing | All bank connections down | Bank sync dead on quarter-end",
                "None of our bank accounts have synced for {n} days. {bank} and {bank2} both show a "
                "connection error. We close the quarter today and can't reconcile anything.",
                "All bank connections failing during quarter-end close",
            ),
            V(
                "Every bank connection failed | Bank sync outage | Quarter-end blocked",
                "Every bank connection we have, {bank} and {bank2} included, failed overnight. Our "
                "quarter-end filing is due today and the whole finance team is stuck.",
                "Every bank connection failed overnight before quarter-end filing",
            ),
        ],
        [
            V(
                "Thousands of duplicate transactions | Sync flooded our books | Cash balance shows {big}",
                "Overnight the {bank} sync imported the same transactions thousands of times and our cash "
                "balance now reads {big}. Our lender reviews the books today.",
                "Overnight bank sync flooded ledger with duplicate transactions",
            ),
            V(
                "Whole year imported again | Every transaction duplicated | Books wrong before loan review",
                "{bank} pulled in the whole year again overnight, so every transaction is duplicated and "
                "the balance shows {big}. The loan review is this afternoon.",
                "{bank} re-imported whole year, balances wrong before loan review",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "Transactions not coming through | {bank} stopped syncing | Missing bank transactions",
                "Transactions from our {bank} account stopped coming in after {month} {day}. Online banking "
                "shows {n} payments since then but Ledgerly has none.",
                "{bank} transactions stopped syncing after {month} {day}",
            ),
            V(
                "Nothing new from {bank} | Bank sync stalled | Transactions missing since {month}",
                "Nothing new from {bank} has synced since {month} {day}. The connection says it's fine, yet "
                "about {n} transactions are missing.",
                "{bank} connection looks fine but transactions stopped arriving",
            ),
        ],
        [
            V(
                "Duplicate transactions | Everything imported twice | Doubles from {bank}",
                "Every transaction from {bank} was imported twice this week, {n} duplicates so far, which "
                "throws off reconciliation.",
                "{bank} sync importing every transaction twice",
            ),
            V(
                "Same transactions keep reappearing | {bank} duplicates | Doubled bank lines",
                "Our {bank} connection keeps pulling the same transactions in again. I've deleted {n} "
                "doubles already and more keep appearing.",
                "{bank} connection keeps re-importing the same transactions",
            ),
        ],
        [
            V(
                "Can't reconnect {bank} | Bank connection expired | Reconnect fails with {code}",
                "The connection to {bank} expired, and when I try to reconnect I get error {code} right "
                "after logging in at the bank's page.",
                "Reconnecting expired {bank} connection fails with {code}",
            ),
            V(
                "Re-authorising {bank} fails | Bank stays disconnected | Error {code} on reconnect",
                "Ledgerly asked me to re-authorise {bank}. I log in, approve access, then it fails with "
                "{code} and the account stays disconnected.",
                "{bank} re-authorisation fails with {code}, account disconnected",
            ),
        ],
        [
            V(
                "Wrong dates on synced transactions | Transaction dates off by a day | {bank} dates wrong",
                "Card transactions from {bank} come through with the wrong date, usually a day early, so "
                "they don't line up with our statement.",
                "{bank} card transactions importing a day early",
            ),
            V(
                "Posting dates shifted | Month-end cut-off wrong | Dates wrong since {month}",
                "Since {month}, transactions imported from {bank} show the posting date shifted by one day, "
                "so the month-end cut-off is wrong.",
                "{bank} transactions imported with posting date shifted a day",
            ),
        ],
        [
            V(
                "Bank balance doesn't match | Synced balance is off | {bank} balance mismatch",
                "The balance Ledgerly shows for our {bank} account is off by {amt} compared with online "
                "banking after the last sync.",
                "{bank} balance in Ledgerly off by {amt} after sync",
            ),
            V(
                "Balance lower than the bank says | Balance wrong after sync | {amt} difference",
                "After this morning's sync, our {bank} balance in Ledgerly is {amt} lower than the bank "
                "says. No transactions look obviously wrong.",
                "{bank} balance {amt} lower than online banking after sync",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Do you support {bank}? | Connecting a smaller bank | Bank not in the list",
                "Do you support connecting accounts from {bank}? It's a smaller local institution and I "
                "can't find it in the list.",
                "Asks whether {bank} accounts can be connected",
            ),
            V(
                "New account with {bank} | Will {bank} sync? | Supported banks",
                "We're opening an account with {bank} next month. Will Ledgerly be able to pull "
                "transactions from them automatically?",
                "Asks whether {bank} transactions can sync automatically",
            ),
        ],
        [
            V(
                "How far back does sync go? | Importing older transactions | Historic transactions",
                "When I first connect an account, how many months of history will the bank sync pull in? "
                "We'd like everything from {month} last year.",
                "Asks how many months of history bank sync imports",
            ),
            V(
                "Choosing a sync start date | Avoid re-importing old transactions | Start date for {bank}",
                "Can I choose a start date when connecting our {bank} account, so older transactions we "
                "already entered aren't pulled in again?",
                "Asks how to set a sync start date for {bank}",
            ),
        ],
        [
            V(
                "Pausing a bank connection | Closing an account | Stop syncing one account",
                "We're closing our {bank} savings account. Can I stop it syncing without deleting its "
                "transaction history?",
                "Asks how to stop syncing a closed account but keep history",
            ),
            V(
                "Pause one connection? | Keep history, stop sync | Disconnect without deleting",
                "Is there a way to pause the connection for one bank account while keeping the existing "
                "transactions?",
                "Asks how to pause bank sync without losing history",
            ),
        ],
    ],
}

PAYROLL: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "Pay run failing on pay day | Can't pay staff today | Wages due TODAY - pay run error",
                "Staff are due to be paid today and the pay run fails with {code} every time I submit. {n} "
                "employees won't get their wages.",
                "Pay run fails with {code} on pay day, staff unpaid",
            ),
            V(
                "Pay day and the pay run won't submit | Staff won't be paid | Pay run error {code}",
                "It's pay day and submitting the pay run throws {code}. None of our {n} staff will be paid "
                "unless this is fixed in the next few hours.",
                "Pay run submission failing on pay day for all staff",
            ),
        ],
        [
            V(
                "All payslips show zero | Zero net pay for everyone | Salaries go out this afternoon",
                "Every payslip in today's pay run shows zero net pay, and salaries are due to go out this "
                "afternoon to all {n} staff.",
                "All payslips showing zero net pay on pay day",
            ),
            V(
                "Pay run calculated nothing | Whole team paid zero | Wages due by 3pm",
                "Today's pay run calculated {cur}0.00 for the entire team. Wages must leave our bank by 3pm "
                "or {n} people go unpaid.",
                "Pay run calculated zero for whole team on pay day",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "Payslip overtime wrong | Wrong hours on payslip | {emp_first}'s pay is short",
                "{emp}'s payslip for {month} shows {h1} hours of overtime but they worked {h2}. Their net "
                "pay is short by {amt}.",
                "{month} payslip shows wrong overtime hours, employee underpaid",
            ),
            V(
                "Overtime underpaid | Short wages for {emp_first} | Overtime hours missing",
                "The {month} pay run only paid {emp_first} for {h1} overtime hours instead of {h2}, so their "
                "wages came out {amt} short.",
                "Employee underpaid {amt} for overtime in {month} pay run",
            ),
        ],
        [
            V(
                "Tax withholding jumped | Wrong tax on payslip | Tax code reset?",
                "Tax withheld on {emp}'s last pay jumped to {amt} even though their salary didn't change. "
                "Their tax code looks like it reset.",
                "Employee's tax withholding jumped, tax code seems reset",
            ),
            V(
                "Income tax doubled | Tax deduction too high | Payslip tax looks wrong",
                "In the {month} pay run the income tax deducted for {emp_first} almost doubled. Nothing "
                "changed on their salary or tax details.",
                "Income tax deducted nearly doubled in {month} pay run",
            ),
        ],
        [
            V(
                "Pay run stuck | Can't approve pay run | {month} pay run won't finish",
                "The {month} pay run has been stuck on 'calculating' since yesterday and the approve button "
                "stays greyed out.",
                "{month} pay run stuck calculating, cannot be approved",
            ),
            V(
                "Pay run times out | Approval blocked | Pay run error {code}",
                "I can't approve this month's pay run. It says 'calculation in progress' for hours and then "
                "times out with {code}.",
                "Pay run calculation times out with {code}, approval blocked",
            ),
        ],
        [
            V(
                "New starter missing from pay run | New employee not in pay run | Can't pay new hire",
                "I added {emp} as a new starter on {month} {day}, but they don't appear in the current pay "
                "run at all.",
                "New starter added {month} {day} missing from pay run",
            ),
            V(
                "New hire not listed | Pay run missing an employee | {emp_first} not in pay run",
                "Our new hire {emp_first} starts being paid this month, but the pay run only lists the "
                "other {n} employees.",
                "New hire not listed in this month's pay run",
            ),
        ],
        [
            V(
                "Pension deductions missing | No pension on payslips | Pension contributions gone",
                "Pension contributions haven't been deducted from our part-time staff's salaries since the "
                "{month} pay run.",
                "Pension deductions missing for part-time staff since {month}",
            ),
            V(
                "Pension not deducted | Enrolled staff without pension | Pension line missing",
                "The payslips for {emp_first} and two others show no employee pension contribution this "
                "month, though they're enrolled.",
                "Enrolled employees' payslips show no pension contribution",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Fortnightly pay for one person | Setting up a second pay schedule | Two pay frequencies",
                "How do I set up a fortnightly pay schedule for one employee while everyone else stays "
                "monthly?",
                "Asks how to add a fortnightly pay schedule for one employee",
            ),
            V(
                "Contractor pay | Paying a freelancer | Contractors in the pay run?",
                "Can I pay a contractor through a pay run, or should contractors be handled as bills "
                "instead?",
                "Asks whether contractors should be paid via pay run",
            ),
        ],
        [
            V(
                "Can staff see their own payslips? | Employee access to payslips | Payslip portal",
                "Can employees log in and download their own payslips, or do I have to send each one out "
                "after every pay run?",
                "Asks whether employees can download their own payslips",
            ),
            V(
                "Past payslips for staff | Staff self-service | Payslip history for employees",
                "Is there a way for our {n} staff to view past payslips themselves without giving them "
                "access to the books?",
                "Asks how staff can view past payslips without book access",
            ),
        ],
        [
            V(
                "Paying a one-off bonus | Bonus for one employee | Bonus outside normal pay",
                "We'd like to give {emp_first} a one-off bonus of {amt} in {month}. Can that go in a "
                "separate pay run, and how is tax worked out?",
                "Asks how to pay one employee a one-off bonus",
            ),
            V(
                "Year-end bonus for staff | Bonus for the whole team | Paying bonuses in December",
                "What's the best way to pay a year-end bonus to all staff without messing up the regular "
                "monthly pay run?",
                "Asks how to pay a year-end bonus to all staff",
            ),
        ],
    ],
}

ACCESS_SSO: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "Nobody can log in | Whole company locked out | SSO down for everyone",
                "Nobody in the company can sign in since this morning. All {n} of us get 'SSO configuration "
                "invalid' after the {idp} redirect.",
                "Entire company locked out after {idp} SSO failure",
            ),
            V(
                "Entire team locked out | Single sign-on broken for all | No one can sign in",
                "Our entire team is locked out. {idp} single sign-on into Ledgerly fails for every user, "
                "admins included, and we can't work.",
                "{idp} single sign-on failing for every user including admins",
            ),
        ],
        [
            V(
                "Only admin locked out | Lost 2FA device, sole admin | No admin access at all",
                "Our only admin account is locked and the two-factor device was lost. Nobody can approve "
                "anything and we close the month today.",
                "Only admin locked out with lost two-factor device",
            ),
            V(
                "Sole administrator gone | Admin 2FA phone lost | Nobody has admin rights",
                "The sole administrator left and their 2FA phone went with them. No one at {biz} can sign "
                "in with admin rights and bills are due today.",
                "Sole admin left with 2FA device, nobody has admin access",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "Password reset not arriving | No reset message | Can't reset my password",
                "I requested a password reset three times but the message never reaches my inbox, and the "
                "one link I did get says it has expired.",
                "Password reset message never arrives, link expired",
            ),
            V(
                "Reset link expired | Password reset link invalid | Reset token error",
                "Clicking the password reset link takes me to 'token invalid or expired' even when I open "
                "it straight away.",
                "Password reset link shows token invalid or expired",
            ),
        ],
        [
            V(
                "2FA codes rejected | Two-factor not accepting codes | Authenticator codes invalid",
                "My two-factor codes keep getting rejected as invalid since I moved my authenticator to a "
                "new phone. The clock is set correctly.",
                "Two-factor codes rejected after moving authenticator to new phone",
            ),
            V(
                "Can't get past 2FA | Lost backup codes | Two-factor code not accepted",
                "Ledgerly won't accept the six-digit 2FA code from my authenticator, and I don't have the "
                "backup codes any more.",
                "2FA code not accepted and no backup codes available",
            ),
        ],
        [
            V(
                "Account locked | Locked out after failed logins | Still locked out",
                "My login got locked after too many wrong password attempts. It said to wait 30 minutes, "
                "but it's been {n} hours.",
                "Login still locked {n} hours after failed password attempts",
            ),
            V(
                "Team member locked out | Can't unlock a user | Unlock option missing",
                "{emp_first} on our team is locked out of Ledgerly after mistyping the password, and the "
                "unlock option doesn't appear for me as admin.",
                "Admin cannot unlock team member after failed logins",
            ),
        ],
        [
            V(
                "SAML error for one user | {idp} single sign-on failing | SSO login error",
                "Since we switched to {idp} single sign-on, {emp_first} gets a SAML error '{saml}' when "
                "signing in. Everyone else is fine.",
                "{idp} SAML error '{saml}' for one user",
            ),
            V(
                "One user can't sign in via {idp} | SAML response rejected | SSO redirect error",
                "One of our users can't sign in via {idp}. Ledgerly shows '{saml}' after the redirect back "
                "from the identity provider.",
                "One user's {idp} sign-in fails after redirect back",
            ),
        ],
        [
            V(
                "Can't invite a new user | User seat limit wrong | No seats left?",
                "I can't invite another user: the invite button is greyed out and says no seats left, but "
                "our {plan} plan should have room for more.",
                "Cannot invite user, seat limit wrong on {plan} plan",
            ),
            V(
                "Permissions for our accountant | Adviser role can't reconcile | User role not working",
                "I gave our accountant {emp_first} the Adviser role, but they still can't open bank "
                "reconciliation or approve bills.",
                "Accountant's Adviser role missing reconciliation and approval permissions",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Enforce 2FA for everyone? | Mandatory two-factor | Security settings question",
                "Can we make two-factor authentication mandatory for every user on the {plan} plan? Some "
                "staff still haven't turned it on.",
                "Asks how to make two-factor mandatory for all users",
            ),
            V(
                "Require 2FA at sign-in | Blocking users without 2FA | Two-factor policy",
                "Is there a setting to require 2FA and block sign-in for users who haven't enabled it yet?",
                "Asks whether sign-in can be blocked without 2FA enabled",
            ),
        ],
        [
            V(
                "SCIM with {idp}? | Automatic user provisioning | {idp} provisioning",
                "Do you support SCIM provisioning with {idp}, so that leavers lose their Ledgerly login "
                "automatically?",
                "Asks whether SCIM provisioning with {idp} is supported",
            ),
            V(
                "Rolling out {idp} | Auto-creating users | User provisioning question",
                "We're rolling out {idp}. Will new users be created in Ledgerly automatically, or do we "
                "still invite them by hand?",
                "Asks whether {idp} users are created in Ledgerly automatically",
            ),
        ],
        [
            V(
                "Read-only role? | View-only user | Roles question",
                "Is there a user role that can view everything but not change anything? Our investor wants "
                "to look around.",
                "Asks whether a view-only user role exists",
            ),
            V(
                "Auditor role idea | Read-only access for auditors | Feature request: read-only role",
                "Could you add a read-only role for auditors? Right now the lowest role can still edit "
                "contacts.",
                "Feature request for a read-only auditor role",
            ),
        ],
    ],
}

API_INTEGRATIONS: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "Production webhooks down | All webhook deliveries failing | Webhooks outage",
                "Our production webhooks are down for all customers. Every delivery since {time} fails with "
                "{http} and our checkout depends on them.",
                "Production webhooks failing for all customers since {time}",
            ),
            V(
                "No webhooks reaching production | Webhook deliveries {http} | Customers' orders stuck",
                "Since {time} no webhook has reached our production endpoint, each attempt logs {http}. "
                "Thousands of our customers' orders are stuck.",
                "No webhooks delivered to production since {time}, orders stuck",
            ),
        ],
        [
            V(
                "API rejecting every request | Total API outage for our platform | API {http} on all calls",
                "Your API has rejected every request from our platform with {http} since {time}. {n} of our "
                "client businesses can't post invoices.",
                "API rejecting all platform requests, clients cannot post invoices",
            ),
            V(
                "Every API call failing | Integration completely down | API down for all our clients",
                "Every API call we make returns {http} since {time}. Our whole integration is down and all "
                "our clients are affected.",
                "Every API call returning {http}, whole integration down",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "Webhooks failing | Webhook signature mismatch | {event} events not arriving",
                "Our endpoint stopped receiving {event} webhooks on {month} {day}. The delivery log shows a "
                "'signature mismatch' for each attempt.",
                "Webhooks for {event} failing signature check since {month} {day}",
            ),
            V(
                "Webhook verification failing | Signing secret problem? | {event} deliveries rejected",
                "Webhook deliveries for {event} are failing verification since {month} {day}. We haven't "
                "rotated the signing secret.",
                "Webhook verification for {event} failing without secret rotation",
            ),
        ],
        [
            V(
                "Hitting 429 too early | Rate limit lower than documented | Too Many Requests errors",
                "Our sync script gets HTTP 429 Too Many Requests after about {rpm} calls a minute, well "
                "below the limit your developer docs list.",
                "API returns 429 at {rpm} calls a minute, below documented limit",
            ),
            V(
                "API throttling us | Throttled at {rpm} requests | Rate limiting changed?",
                "The API started throttling us at roughly {rpm} requests per minute since {month}. Nothing "
                "changed on our side.",
                "API throttling at {rpm} requests per minute since {month}",
            ),
        ],
        [
            V(
                "{integ} orders not syncing | {integ} connection stopped | Sales from {integ} missing",
                "Orders from {integ} stopped showing up as sales in Ledgerly after {month} {day}. The "
                "connection page still says 'active'.",
                "{integ} orders stopped syncing as sales after {month} {day}",
            ),
            V(
                "{integ} connector not posting | No {integ} sales since {month} | Connector stuck",
                "Our {integ} connector hasn't posted a sale since {month} {day}, though the store has had "
                "{n} orders. Disconnecting and reconnecting didn't help.",
                "{integ} connector not posting sales since {month} {day}",
            ),
        ],
        [
            V(
                "API key returning 401 | invalid_token errors | API auth stopped working",
                "Our API key started returning 401 invalid_token today, although nobody regenerated it and "
                "it isn't expired.",
                "Unexpired API key suddenly rejected with 401 invalid_token",
            ),
            V(
                "Production key rejected | New API key fails too | 401 on every call",
                "All calls with our production API key fail with 401 since {month} {day}. A freshly created "
                "key fails the same way.",
                "Production and new API keys both failing with 401",
            ),
        ],
        [
            V(
                "Zapier trigger firing twice | Duplicate Zapier runs | Zap '{zap}' misbehaving",
                "The Zapier trigger '{zap}' fires twice for every record we create, so our CRM fills up "
                "with duplicates.",
                "Zapier '{zap}' trigger firing twice per record",
            ),
            V(
                "Zap runs two times | Double Zapier events | Zapier duplicates since {month}",
                "Since {month}, our Ledgerly '{zap}' Zap runs two times per event. Turning it off and on "
                "again didn't help.",
                "Zapier '{zap}' Zap running twice per event since {month}",
            ),
        ],
        [
            V(
                "{integ} payouts missing fees | Payout amounts don't match | {integ} fees not recorded",
                "The {integ} connector records payouts without the processing fees, so each deposit is off "
                "by a small amount and won't match.",
                "{integ} payouts recorded without processing fees",
            ),
            V(
                "Gross payouts from {integ} | Fees never synced | {integ} deposits off",
                "Payouts synced from {integ} show the gross amount. The fees never arrive as expenses, so "
                "every payout is off.",
                "{integ} payouts synced gross, fees never recorded",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Sandbox for the API? | Testing environment | API test mode",
                "Is there a sandbox environment where we can test API calls and webhooks without touching "
                "real books?",
                "Asks whether an API sandbox environment exists",
            ),
            V(
                "Developer test account | Test company for development | Dummy data for API work",
                "We're building a connector for our app. Can we get a test company with dummy data for API "
                "development?",
                "Asks for a test company with dummy data for API development",
            ),
        ],
        [
            V(
                "{pos} connector? | Integration request: {pos} | Any plans for {pos}?",
                "Do you plan to add a {pos} connector? We use it for our point of sale and copy sales in by "
                "hand.",
                "Asks whether a {pos} connector is planned",
            ),
            V(
                "Native {pos} integration | {pos} on the roadmap? | Idea: {pos} sync",
                "Would love a native {pos} integration so daily sales post automatically. Is that on the "
                "roadmap?",
                "Feature request for a native {pos} integration",
            ),
        ],
        [
            V(
                "Line items in webhook payload | Webhook payload question | Webhook payload contents",
                "Can webhook payloads include invoice line items, or do we need to fetch each invoice from "
                "the API afterwards?",
                "Asks whether webhook payloads can include invoice line items",
            ),
            V(
                "Pagination in the API | API page size | Listing transactions via API",
                "What's the maximum page size when listing transactions through the API, and is there "
                "cursor pagination?",
                "Asks about API page size limits and cursor pagination",
            ),
        ],
    ],
}

REPORTS_EXPORT: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "All reports show zero | Reports blank on filing day | Every report empty",
                "Our annual filing is due today and the balance sheet and P&L both show zero for every "
                "account since the overnight update.",
                "All reports showing zero on filing deadline day",
            ),
            V(
                "Blank figures everywhere | Tax deadline today, reports empty | Reports broken",
                "Since this morning every report in our company shows blank figures. Our tax filing "
                "deadline is today and our accountant can't file.",
                "Every report blank on tax filing deadline day",
            ),
        ],
        [
            V(
                "Exports failing before board meeting | No report exports work | Board pack blocked",
                "The board meeting starts in two hours and every report export fails with error {code}. "
                "Nobody on the finance team can produce anything.",
                "All report exports failing hours before board meeting",
            ),
            V(
                "Nothing will export | Investor pack due in an hour | Exports failing with {code}",
                "None of our reports will export, PDF or CSV, all fail with {code}. The investor pack is "
                "due in an hour and the whole team is blocked.",
                "No report exports work, investor pack due within the hour",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "P&L revenue wrong | Profit and loss doesn't match sales | Revenue wrong on P&L",
                "The profit and loss report for {month} shows revenue of {amt} but our sales invoices add "
                "up to {amt2}.",
                "{month} profit and loss revenue doesn't match sales invoices",
            ),
            V(
                "P&L counting expenses twice | Costs doubled on profit and loss | P&L figures wrong",
                "Our {month} P&L counts some expenses twice. Total costs show {amt_hi}, but the individual "
                "bills only come to {amt_lo}.",
                "{month} profit and loss counts some expenses twice",
            ),
        ],
        [
            V(
                "Balance sheet doesn't balance | Balance sheet out by {amt} | Assets don't match",
                "Our balance sheet as at {month} {day} is out by {amt}. Assets no longer equal liabilities "
                "plus equity since we closed the year.",
                "Balance sheet out by {amt} after year-end close",
            ),
            V(
                "Retained earnings wrong | Year-end balance sheet wrong | Opening balances off",
                "After locking the {year} year, the balance sheet shows retained earnings {amt} different "
                "from last year's closing figure.",
                "Retained earnings off by {amt} after locking {year}",
            ),
        ],
        [
            V(
                "CSV export broken | Export splits amounts | General ledger CSV problem",
                "When I export the general ledger to CSV, amounts over a thousand have commas in them, so "
                "Excel splits each number into two columns.",
                "General ledger CSV export splits amounts across columns",
            ),
            V(
                "CSV export missing columns | {report} CSV looks wrong | Dates wrong in CSV export",
                "The CSV export of the {report} drops the account codes column and the dates come out in "
                "US format.",
                "{report} CSV export missing account codes, wrong date format",
            ),
        ],
        [
            V(
                "PDF export cut off | Totals missing from PDF | {report} PDF truncated",
                "The PDF export of the {report} cuts off the last column on every page, so the totals are "
                "missing.",
                "{report} PDF export cuts off the totals column",
            ),
            V(
                "PDF export layout broken | {report} PDF looks wrong | Blank page in PDF export",
                "Exporting the {report} as PDF gives a blank second page and our logo overlaps the heading.",
                "{report} PDF export has blank page and overlapping logo",
            ),
        ],
        [
            V(
                "Full data export stuck | Export for our accountant | Data export never finishes",
                "I need a full data export for our accountant for the {year} tax year, but the export has "
                "been 'processing' for {n} hours.",
                "Full {year} data export for accountant stuck processing",
            ),
            V(
                "Year-end export pack incomplete | Export zip missing ledgers | Accountant export incomplete",
                "The year-end export pack for our accountant finishes, but the zip only has the {report} "
                "and none of the ledgers.",
                "Year-end export pack for accountant is missing the ledgers",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Schedule a monthly report? | Automatic P&L each month | Sending the P&L automatically",
                "Can I schedule the P&L to go to our accountant as a PDF on the first of every month?",
                "Asks how to schedule a monthly P&L PDF to accountant",
            ),
            V(
                "Saving a report layout | Custom report templates? | Recurring report",
                "Is there a way to save a customised {report} layout so I don't rebuild it every month?",
                "Asks how to save a customised {report} layout",
            ),
        ],
        [
            V(
                "Comparing years | Side-by-side years | Variance column in balance sheet",
                "Is it possible to compare {year} and the year before side by side in the balance sheet, "
                "with a variance column?",
                "Asks how to compare two years in the balance sheet",
            ),
            V(
                "Monthly columns in a report | Month-by-month view | Report comparison columns",
                "Can the {report} show each month as its own column for the whole year?",
                "Asks whether the {report} can show monthly columns",
            ),
        ],
        [
            V(
                "CSV delimiter option | Semicolons in CSV export | Export format question",
                "Does the CSV export support a semicolon delimiter? Our accountant's software expects that "
                "format.",
                "Asks whether CSV export supports a semicolon delimiter",
            ),
            V(
                "Excel export? | Native Excel download | Export format idea",
                "Could you add a native Excel export for the {report}? Converting from CSV every time is "
                "tedious.",
                "Feature request for native Excel export of the {report}",
            ),
        ],
    ],
}

MOBILE_APP: dict[str, list[Scenario]] = {
    "P1": [
        [
            V(
                "App crashing for whole team | Field team can't use the app | App down for everyone",
                "Our whole field team of {n} logs jobs and receipts in the phone app, and since this "
                "morning's update it crashes for all of them, iPhone and Android alike.",
                "App crashing for entire field team after update",
            ),
            V(
                "Crash on open for all engineers | Update {ver} broke the app | Nobody can log jobs",
                "After update {ver} the Ledgerly app crashes on open for every one of our {n} engineers. "
                "They can't record any jobs today and we invoice from those.",
                "App version {ver} crashing on open for all engineers",
            ),
        ],
        [
            V(
                "App sync failed for all staff | Nobody's app is syncing | Expense cut-off today, app broken",
                "The iPhone and Android apps both show 'sync failed' for everyone at {biz}. {n} drivers "
                "can't submit expenses before today's cut-off.",
                "App sync failing for all staff before expense cut-off",
            ),
            V(
                "Staff phones not syncing | Receipts stuck on devices | Expense deadline today",
                "None of our staff phones have synced since {time}, and expense claims close today. Dozens "
                "of receipts are stuck on devices.",
                "No staff phones syncing since {time}, expense deadline today",
            ),
        ],
    ],
    "P23": [
        [
            V(
                "App crashes on launch | Crash after update {ver} | Ledgerly app won't open",
                "The Ledgerly app on my {device} crashes right after the splash screen since updating to "
                "version {ver}. Reinstalling didn't help.",
                "App crashes on launch on {device} after {ver} update",
            ),
            V(
                "{os} app closes itself | App quits immediately | Crash since {ver}",
                "Since the {ver} update the {os} app closes itself as soon as I open it on my {device}.",
                "{os} app closes on open on {device} since {ver}",
            ),
        ],
        [
            V(
                "Receipt scanning not working | Could not read receipt | Snap receipt fails",
                "When I snap a receipt with the camera in the app on my {device}, it spins for a while and "
                "then says 'could not read receipt'. Every receipt.",
                "Receipt scanning on {device} fails with could not read",
            ),
            V(
                "Can't read receipts | Receipt capture failing | Photos of receipts rejected",
                "Receipt capture on my phone ({device}) fails on every photo, even clear supermarket "
                "receipts in good light.",
                "Receipt capture fails on every photo on {device}",
            ),
        ],
        [
            V(
                "Phone expenses not syncing | App not syncing to web | Expenses stuck on my phone",
                "Expenses I add in the app on my {device} don't show up on the web dashboard, even a day "
                "later. They show 'pending sync'.",
                "Expenses added on {device} stuck pending sync",
            ),
            V(
                "Last synced days ago | Phone not syncing | Nothing reaches the website",
                "The app on my phone says 'last synced {day} days ago' and anything I record on the "
                "{device} never reaches the web version.",
                "App on {device} not syncing for {day} days",
            ),
        ],
        [
            V(
                "Camera black screen | Camera won't open in app | Can't photograph receipts",
                "The app on my {device} won't open the camera for receipts. It just shows a black screen, "
                "though camera access is allowed in settings.",
                "Camera shows black screen when scanning receipts on {device}",
            ),
            V(
                "Scan receipt freezes | Black camera view | App freezes on camera",
                "Tapping 'scan receipt' on my {device} freezes the app on a black camera view since version "
                "{ver}.",
                "Scan receipt freezes on black camera view since {ver}",
            ),
        ],
        [
            V(
                "Scanned totals wrong | Receipt amounts read incorrectly | Scan picks wrong total",
                "Receipts scanned with my phone come through with the wrong total. A {amt} fuel receipt "
                "showed up as {amt2}.",
                "Phone receipt scans record wrong totals, {amt} read as {amt2}",
            ),
            V(
                "Scanner reads tax as total | Wrong amount from receipt scan | Expense amounts wrong",
                "The app's receipt scanner on my {device} keeps picking the tax line instead of the total, "
                "so expenses are recorded wrong.",
                "Receipt scanner on {device} reads tax line as total",
            ),
        ],
    ],
    "P4": [
        [
            V(
                "Does the app work offline? | Offline mode | Using the app without signal",
                "Does the iPhone app work offline? I'm often on sites with no signal and want to log "
                "receipts there to sync later.",
                "Asks whether the iPhone app works offline",
            ),
            V(
                "Capturing receipts offline | Upload after reconnecting? | No connection on site",
                "If I capture receipts on my {device} with no connection, will they upload by themselves "
                "once I'm back online?",
                "Asks whether offline receipt captures upload automatically later",
            ),
        ],
        [
            V(
                "Long receipts | Multi-page receipt scanning | Two-page hotel bills",
                "Can the Android app scan a long or multi-page receipt into one expense? Hotel bills are "
                "usually two pages.",
                "Asks whether Android app can scan multi-page receipts",
            ),
            V(
                "Two photos on one expense | Attaching several photos | Multiple images per receipt",
                "Is there a way to attach two photos to one expense when I scan receipts on my {device}?",
                "Asks how to attach two receipt photos to one expense",
            ),
        ],
        [
            V(
                "iPad version? | Tablet support | App on a tablet",
                "Will there be a proper iPad version of the Ledgerly app? The phone layout looks stretched "
                "on our shop tablet.",
                "Asks whether a proper iPad version of the app is planned",
            ),
            V(
                "Widget for the phone app | Home-screen widget idea | Quicker receipt capture",
                "Feature idea: a home-screen widget on {os} for quick receipt capture straight from the "
                "phone.",
                "Feature request for an {os} widget for receipt capture",
            ),
        ],
    ],
}

SCENARIOS: dict[str, dict[str, list[Scenario]]] = {
    "billing-refunds": BILLING_REFUNDS,
    "billing-invoices": BILLING_INVOICES,
    "bank-feeds": BANK_FEEDS,
    "payroll": PAYROLL,
    "access-sso": ACCESS_SSO,
    "api-integrations": API_INTEGRATIONS,
    "reports-export": REPORTS_EXPORT,
    "mobile-app": MOBILE_APP,
}

# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def money(r: random.Random, cur: str, lo: int, hi: int, cents: bool = True) -> str:
    value = r.randint(lo, hi)
    return f"{cur}{value:,}.{r.randint(0, 99):02d}" if cents else f"{cur}{value:,}"


def make_slots(r: random.Random) -> Slots:
    """Draw every slot a scenario may use (unused ones are simply ignored)."""
    cur = r.choice(CURRENCIES)
    plan = r.choice(list(PLAN_PRICE))
    plan_a, plan_b = r.sample(list(PLAN_PRICE), 2)
    m1, m2 = r.sample(range(12), 2)
    bank, bank2 = r.sample(BANKS, 2)
    first, emp_first = r.sample(FIRST_NAMES, 2)
    h1, h2 = sorted(r.sample(range(2, 25), 2))  # paid hours < worked hours
    device = r.choice(DEVICES)
    return {
        "first": first,
        "last": r.choice(LAST_NAMES),
        "emp": f"{emp_first} {r.choice(LAST_NAMES)}",
        "emp_first": emp_first,
        "biz": r.choice(BUSINESSES),
        "old": r.choice(OLD_NAMES),
        "cur": cur,
        "curname": r.choice(CURRENCY_NAMES),
        "plan": plan,
        "plan_a": plan_a,
        "plan_b": plan_b,
        "price": f"{cur}{PLAN_PRICE[plan]}.00",
        "annual": f"{cur}{PLAN_PRICE[plan] * 10}.00",
        "month": MONTHS[m1],
        "month2": MONTHS[m2],
        "next_month": MONTHS[(m1 + 1) % 12],
        "day": str(r.randint(1, 28)),
        "day2": str(r.randint(1, 28)),
        "year": str(r.choice([2023, 2024, 2025])),
        "time": r.choice(TIMES),
        "amt": money(r, cur, 12, 900),
        "amt2": money(r, cur, 12, 900),
        "amt_lo": money(r, cur, 12, 400),
        "amt_hi": money(r, cur, 450, 900),
        "big": money(r, cur, 2000, 48000, cents=False),
        "n": str(r.randint(3, 40)),
        "h1": str(h1),
        "h2": str(h2),
        "last4": f"{r.randint(0, 9999):04d}",
        "bank": bank,
        "bank2": bank2,
        "device": device,
        "os": "iOS" if device.startswith("iPhone") else "Android",
        "ver": r.choice(APP_VERSIONS),
        "idp": r.choice(IDPS),
        "saml": r.choice(SAML_ERRORS),
        "integ": r.choice(INTEGRATIONS),
        "pos": r.choice(POS_SYSTEMS),
        "event": r.choice(WEBHOOK_EVENTS),
        "zap": r.choice(ZAPS),
        "rpm": str(r.choice([20, 30, 40, 45, 50])),
        "report": r.choice(REPORTS),
        "code": r.choice(ERROR_CODES),
        "http": r.choice(HTTP_ERRORS),
    }


def priority_cue(r: random.Random, queue: str, priority: str) -> str:
    if priority == "P1":
        return r.choice(P1_CUES)
    if priority == "P2":
        return r.choice(P2_CUES + QUEUE_P2_CUES[queue])
    if priority == "P3":
        workaround = [] if queue.startswith("billing-") else P3_WORKAROUND_CUES
        return r.choice(P3_CUES + workaround + QUEUE_P3_CUES[queue])
    return r.choice(P4_TAILS)


def add_typo(r: random.Random, body: str) -> str:
    candidates = [w for w in TYPOS if re.search(rf"\b{w}\b", body)]
    if not candidates:
        return body
    word = r.choice(candidates)
    return re.sub(rf"\b{word}\b", TYPOS[word], body, count=1)


def compose_body(r: random.Random, s: Slots, core: str, cue: str, priority: str) -> str:
    """Opener, optional self-introduction, problem, priority cue and sign-off, within the word budget."""
    opener = r.choice(OPENERS)
    closer = r.choice(CLOSERS).format_map(s)
    can_intro = s["biz"] not in core
    intro = r.choice(INTROS).format_map(s) if can_intro and r.random() < INTRO_RATE else ""
    # P1 tickets often lead with the urgency; otherwise the cue follows the problem.
    lead_with_cue = priority == "P1" and r.random() < 0.4
    sentences = [cue, core] if lead_with_cue else [core, cue]

    def assemble(op: str, intro_: str, cl: str) -> str:
        main = " ".join(p for p in (intro_, *sentences) if p)
        return "\n\n".join(p for p in (op, main, cl) if p)

    body = assemble(opener, intro, closer)
    # Over budget: drop the intro, then the sign-off, then the greeting.
    for op, it, cl in ((opener, "", closer), (opener, "", ""), ("", "", "")):
        if len(body.split()) <= MAX_BODY_WORDS:
            break
        body = assemble(op, it, cl)
    # Very short questions get a self-introduction and a sign-off so every body has some context.
    if len(body.split()) < MIN_BODY_WORDS:
        intro = intro or (r.choice(INTROS).format_map(s) if can_intro else "")
        body = assemble(opener, intro, closer or r.choice(CLOSERS[1:]).format_map(s))
    return body


def make_ticket(r: random.Random, queue: str, priority: str) -> tuple[str, str]:
    s = make_slots(r)
    group = "P23" if priority in ("P2", "P3") else priority
    variant = r.choice(r.choice(SCENARIOS[queue][group]))
    subject = r.choice(variant.subjects.split(" | ")).format_map(s)
    core = variant.body.format_map(s)
    summary = variant.summary.format_map(s)
    summary = summary[0].upper() + summary[1:]
    if priority == "P1":
        subject = r.choice(P1_SUBJECT_TAGS).format(s=subject)
    elif priority == "P4":
        subject = r.choice(P4_SUBJECT_TAGS).format(s=subject)
    cue = priority_cue(r, queue, priority).format_map(s)
    body = compose_body(r, s, core, cue, priority)
    if r.random() < TYPO_RATE:
        body = add_typo(r, body)
    instruction = f"Subject: {subject}\n\n{body}"
    output = json.dumps({"queue": queue, "priority": priority, "summary": summary}, ensure_ascii=False)
    return instruction, output


def shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(max(len(words) - 2, 1))}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def body_words(instruction: str) -> int:
    return len(instruction.split("\n\n", 1)[1].split())


def check_ticket(instruction: str, output: str) -> None:
    """Invariants every ticket must satisfy; a failure is a bug in the scenario tables."""
    summary = json.loads(output)["summary"]
    assert MIN_SUMMARY_WORDS <= len(summary.split()) <= MAX_SUMMARY_WORDS, summary
    lowered = instruction.lower()
    for q in QUEUES:
        for form in (q, q.replace("-", " ")):
            assert form not in lowered, (form, instruction)
    assert "bank feed" not in lowered and "mobile app" not in lowered, instruction
    # Nothing the PII-redaction stage would touch: no emails, no long digit runs (phones, accounts).
    assert "@" not in instruction and not re.search(r"\d[\d -]{5,}\d", instruction), instruction
    assert "{" not in instruction + summary and "}" not in instruction + summary, instruction


def generate(seed: int = SEED) -> list[dict[str, str]]:
    r = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    accepted: dict[str, list[set[tuple[str, ...]]]] = {q: [] for q in QUEUES}
    for queue in QUEUES:
        for priority, count in PRIORITY_COUNTS.items():
            made = attempts = 0
            while made < count:
                attempts += 1
                if attempts > 5000:
                    raise RuntimeError(f"not enough varied tickets for {queue}/{priority}")
                instruction, output = make_ticket(r, queue, priority)
                if instruction in seen or not MIN_BODY_WORDS <= body_words(instruction) <= MAX_BODY_WORDS:
                    continue
                sh = shingles(instruction)
                if any(jaccard(sh, other) > MAX_JACCARD for other in accepted[queue]):
                    continue
                check_ticket(instruction, output)
                seen.add(instruction)
                accepted[queue].append(sh)
                rows.append({"instruction": instruction, "output": output})
                made += 1
    r.shuffle(rows)
    assert len(rows) == N_TICKETS
    return rows


def write_jsonl_atomic(rows: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the dataset is an ordinary shipped file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main() -> None:
    rows = generate()
    write_jsonl_atomic(rows, OUT_PATH)
    print(f"wrote {len(rows)} tickets to {OUT_PATH}")


if __name__ == "__main__":
    main()
