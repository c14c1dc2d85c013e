export function Header({ title }) {
  const el = document.createElement('header');
  el.className = 'header';
  const logo = document.createElement('img');
  logo.src = '/assets/v2/logo.svg';
  logo.alt = '';
  logo.width = 28;
  const h1 = document.createElement('h1');
  h1.textContent = title;
  el.append(logo, h1);
  return el;
}
