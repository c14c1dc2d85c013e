import { Header } from './components/Header.js';

const API_URL = window.PRIMEFLOW_API_URL || 'http://localhost:3001';

async function render() {
  const app = document.getElementById('app');
  app.innerHTML = '';
  app.appendChild(Header({ title: 'PrimeFlow' }));

  const list = document.createElement('ul');
  list.className = 'users';
  try {
    const res = await fetch(`${API_URL}/users`);
    const { users } = await res.json();
    for (const u of users) {
      const li = document.createElement('li');
      li.textContent = `${u.name} <${u.email}>`;
      list.appendChild(li);
    }
  } catch (err) {
    list.textContent = 'API unavailable';
  }
  app.appendChild(list);
}

render();
