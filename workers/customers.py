"""Finding the customer an event is about, or creating them, without duplicates."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.business import Company, normalize_email
from models.customers import Customer
from models.phones import normalize_phone
from workers.retries import RaceLost


def find_or_create_customer(
    session: Session,
    company_id: int | None,
    *,
    phone: str | None = None,
    email: str | None = None,
    name: str | None = None,
) -> Customer | None:
    """The customer with this email (anywhere: email is UNIQUE), else with this phone
    in this company (NULL company: callers of numbers no branch owns); created when
    neither exists. Missing details are filled in, known ones never overwritten.
    None when the event names neither a phone nor an email.

    Creation is serialized per company (the company row is locked), so two workers
    seeing the same new caller at once create one customer. Raises RaceLost when a
    concurrent insert of the same email wins; the caller's retry then finds it.
    """
    email = normalize_email(email)
    number = normalize_phone(phone).value if phone and phone.strip() else None
    if email is None and number is None:
        return None
    customer = _find(session, company_id, email, number)
    if customer is None and company_id is not None:
        session.execute(select(Company.id).where(Company.id == company_id).with_for_update())
        customer = _find(session, company_id, email, number)
    if customer is None:
        customer = Customer(company_id=company_id, email=email, phone=number, name=name or None)
        session.add(customer)
        try:
            session.flush()
        except IntegrityError as error:
            raise RaceLost(f"customer {email or number} was created concurrently") from error
        return customer
    _fill(customer, company_id, email, number, name)
    return customer


def _find(
    session: Session, company_id: int | None, email: str | None, number: str | None
) -> Customer | None:
    if email is not None:
        found = session.scalars(select(Customer).where(Customer.email == email)).first()
        if found is not None:
            return found
    if number is not None:
        company = (
            Customer.company_id.is_(None)
            if company_id is None
            else Customer.company_id == company_id
        )
        return session.scalars(
            select(Customer).where(company, Customer.phone == number).order_by(Customer.id)
        ).first()
    return None


def _fill(
    customer: Customer,
    company_id: int | None,
    email: str | None,
    number: str | None,
    name: str | None,
) -> None:
    if customer.company_id is None and company_id is not None:
        customer.company_id = company_id
    if customer.email is None and email is not None:
        customer.email = email
    if customer.phone is None and number is not None:
        customer.phone = number
    if not customer.name and name:
        customer.name = name
